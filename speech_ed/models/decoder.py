"""Pre-LN Transformer decoder with cross-attention and a key/value cache.

Shapes: B batch, U tokens, T encoder frames, D decoder width, V vocabulary, H heads, Dh = D / H.

Decoding runs the decoder on the cache: :meth:`TransformerDecoder.init_cache` computes every layer's
cross-attention keys/values once per utterance and allocates self-attention buffers; each later call with
``cache=`` feeds only the new tokens, whose keys/values are written into the buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from speech_ed.models.attention import MultiHeadAttention, sinusoids
from speech_ed.models.conformer import FeedForward
from speech_ed.models.dims import ModelDims


@dataclass
class KVCache:
    """Decoder state for incremental decoding.

    Attributes:
        self_k, self_v: per layer (B, H, max_len, Dh) buffers; positions [0, length) are filled.
        cross_k, cross_v: per layer (B, H, T, Dh) cross-attention keys/values (computed once).
        memory_mask: (B, 1, 1, T) bool, True on valid encoder frames.
        length: tokens already in the cache.
    """

    self_k: list[torch.Tensor]
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]
    cross_v: list[torch.Tensor]
    memory_mask: torch.Tensor
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.self_k[0].shape[2] if self.self_k else 0

    def reorder(self, index: torch.Tensor) -> None:
        """Select rows (B,) of the self-attention state (beam search). Cross keys/values are not reordered:
        beams only move within their own utterance, whose encoder output they share."""
        n = self.length
        for buf in self.self_k + self.self_v:
            buf[:, :, :n] = buf[index, :, :n]


class DecoderLayer(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        d, p, h, impl = dims.decoder_dim, dims.dropout, dims.num_decoder_heads, dims.attention_impl
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = MultiHeadAttention(d, h, p, impl)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attn = MultiHeadAttention(d, h, p, impl)
        self.ff = FeedForward(d, dims.decoder_ff_mult, p, activation="relu")
        self.dropout = nn.Dropout(p)

    def forward(self, x, self_mask, memory=None, memory_mask=None, cache=None, index=0):
        """x (B, U, D); self_mask (1|B, 1, U, U_total); memory (B, T, D) when no cache; layer ``index``."""
        h = self.self_norm(x)
        if cache is None:
            k, v = self.self_attn.project_kv(h)
        else:
            new_k, new_v = self.self_attn.project_kv(h)
            start, end = cache.length, cache.length + x.shape[1]
            cache.self_k[index][:, :, start:end] = new_k
            cache.self_v[index][:, :, start:end] = new_v
            k, v = cache.self_k[index][:, :, :end], cache.self_v[index][:, :, :end]
        x = x + self.dropout(self.self_attn.attend_kv(h, k, v, self_mask))
        h = self.cross_norm(x)
        if cache is None:
            ck, cv = self.cross_attn.project_kv(memory)
        else:
            ck, cv, memory_mask = cache.cross_k[index], cache.cross_v[index], cache.memory_mask
        x = x + self.dropout(self.cross_attn.attend_kv(h, ck, cv, memory_mask))
        return x + self.ff(x)


class TransformerDecoder(nn.Module):
    """Token embedding (std D^-1/2, scaled by sqrt(D)) + positions, pre-LN layers, final LN, output Linear.

    NeMo's TransformerEmbedding differs, each difference a ModelDims option: no sqrt(D) scaling
    (``decoder_embed_scale``), sinusoids divided by sqrt(D) (``decoder_pos_scale``), a LayerNorm over the sum
    (``decoder_embed_norm``) and a bias on the output projection (``output_bias``).
    """

    def __init__(self, dims: ModelDims):
        super().__init__()
        d = dims.decoder_dim
        self.dim, self.heads = d, dims.num_decoder_heads
        self.max_positions = dims.max_decoder_positions
        self.embed = nn.Embedding(dims.vocab_size, d)
        nn.init.normal_(self.embed.weight, std=d**-0.5)
        self.embed_scale = math.sqrt(d) if dims.decoder_embed_scale else None
        self.learned_pos = dims.decoder_pos == "learned"
        if self.learned_pos:
            self.pos = nn.Parameter(torch.randn(dims.max_decoder_positions, d) * 0.02)
        else:
            pos = sinusoids(torch.arange(dims.max_decoder_positions), d)
            if dims.decoder_pos_scale == "inv_sqrt_dim":
                pos = pos / math.sqrt(d)
            self.register_buffer("pos", pos, persistent=False)
        self.embed_norm = nn.LayerNorm(d) if dims.decoder_embed_norm else None
        self.dropout = nn.Dropout(dims.dropout)
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(dims.num_decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, dims.vocab_size, bias=dims.output_bias)
        if dims.tie_embeddings:
            self.output.weight = self.embed.weight

    def init_cache(self, memory: torch.Tensor, memory_lens: torch.Tensor, max_len: int) -> KVCache:
        """Cross keys/values of memory (B, T, D) once, and empty self-attention buffers of max_len."""
        if max_len > self.max_positions:
            raise ValueError(f"max_len {max_len} exceeds max_decoder_positions={self.max_positions}")
        b, t, _ = memory.shape
        dh = self.dim // self.heads
        ks, vs = [], []
        for layer in self.layers:  # contiguous, so the per-step matmuls read them without copying
            k, v = layer.cross_attn.project_kv(memory)
            ks.append(k.contiguous())
            vs.append(v.contiguous())
        shape = (b, self.heads, max_len, dh)
        dtype = ks[0].dtype if ks else memory.dtype
        n = len(self.layers)
        valid = torch.arange(t, device=memory.device)[None, :] < memory_lens[:, None]
        return KVCache(
            self_k=[memory.new_zeros(shape, dtype=dtype) for _ in range(n)],
            self_v=[memory.new_zeros(shape, dtype=dtype) for _ in range(n)],
            cross_k=ks, cross_v=vs, memory_mask=valid[:, None, None, :],
        )

    def embed_tokens(self, tokens: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """Decoder input (B, U, D) for tokens (B, U) whose position embeddings are pos_emb (U, D) (rows of
        ``self.pos``): token embedding [x sqrt(D)] + positions [-> LayerNorm], as the ModelDims options say."""
        x = self.embed(tokens)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        x = x + pos_emb.to(self.embed.weight.dtype)
        return self.embed_norm(x) if self.embed_norm is not None else x

    def forward(self, tokens, memory=None, memory_lens=None, cache: KVCache | None = None) -> torch.Tensor:
        """Decoder logits.

        Args:
            tokens: (B, U) int64. Without a cache: the whole sequence from position 0 (pads after each row do
                not affect earlier positions). With a cache: only the new tokens, at positions cache.length
                onwards.
            memory: (B, T, D) encoder output (ignored when a cache is given).
            memory_lens: (B,) int64 valid frames of memory.
            cache: from :meth:`init_cache`; advanced by U on return.

        Returns:
            (B, U, V) logits.
        """
        b, u = tokens.shape
        start = cache.length if cache is not None else 0
        bad_memory = memory is None or memory.dim() != 3 or tuple(memory.shape[::2]) != (b, self.dim)
        if cache is None and bad_memory:
            got = None if memory is None else tuple(memory.shape)
            raise ValueError(f"memory must be (B, T, D) = ({b}, T, {self.dim}) without a cache, got {got}")
        if cache is not None and cache.self_k and cache.self_k[0].shape[0] != b:
            raise ValueError(f"tokens have {b} rows but the cache has {cache.self_k[0].shape[0]}")
        if cache is not None and start + u > cache.max_len:
            raise ValueError(f"cache holds {cache.max_len} positions; cannot add {u} tokens after {start}")
        if start + u > self.max_positions:
            raise ValueError(f"decoder input reaches position {start + u} > max_decoder_positions="
                             f"{self.max_positions}")
        x = self.dropout(self.embed_tokens(tokens, self.pos[start : start + u]))
        q_pos = torch.arange(start, start + u, device=tokens.device)
        self_mask = (torch.arange(start + u, device=tokens.device)[None, :] <= q_pos[:, None])[None, None]
        memory_mask = None
        if cache is None:
            t = memory.shape[1]
            frames = torch.arange(t, device=memory.device)
            memory_mask = (frames[None, :] < memory_lens[:, None])[:, None, None]  # (B, 1, 1, T)
        for i, layer in enumerate(self.layers):
            x = layer(x, self_mask, memory, memory_mask, cache, i)
        if cache is not None:
            cache.length += u
        return self.output(self.norm(x))
