"""How decoding feeds tokens to the decoder: on the KV cache, by recomputing the prefix, or on static buffers.

Shapes: N decoding rows (B utterances x K beams), T encoder frames, P prompt tokens, V vocabulary,
H heads, L cache positions, Dh head width.

* :class:`DynamicStepper`: the decoder's own cache path (``TransformerDecoder.forward(..., cache=)``), whose
  attention reads ``cache[:, :, :length]``; or, with ``use_cache=False``, the whole prefix recomputed at every
  step. :meth:`DynamicStepper.select` drops finished rows from the batch and its caches.
* :class:`StaticStepper`: the same step on fixed shapes: the position is a tensor, new keys/values are
  written with ``index_copy_`` and self-attention reads the whole buffer under a mask. Nothing changes shape
  between steps, so on CUDA the step is captured once per batch as a CUDA graph and replayed (decoding is
  launch-bound on a GPU: a 2-layer step is hundreds of small kernels). Without ``cuda_graph`` it runs eagerly,
  which is how the CPU tests check it equals the dynamic path. Its batch cannot shrink (a graph has fixed
  shapes), so finished rows are not dropped.
"""

from __future__ import annotations

import contextlib
import math

import torch

from speech_ed.models.decoder import KVCache


class DynamicStepper:
    """Feeds tokens on the KV cache (``use_cache``) or by recomputing the whole prefix."""

    can_select = True

    def __init__(self, model, enc, enc_lens, prompt, max_len: int, use_cache: bool):
        self.decoder, self.enc, self.enc_lens = model.decoder, enc, enc_lens
        self.cache: KVCache | None = model.decoder.init_cache(enc, enc_lens, max_len) if use_cache else None
        self.tokens = prompt

    def first(self) -> torch.Tensor:
        """Logits (N, V) after the prompt, fed in one step."""
        return self.decoder(self.tokens, self.enc, self.enc_lens, self.cache)[:, -1]

    def next(self, new: torch.Tensor) -> torch.Tensor:
        """Append new (N,) tokens; return logits (N, V) for the following position."""
        self.tokens = torch.cat([self.tokens, new[:, None]], dim=1)
        if self.cache is not None:
            return self.decoder(new[:, None], cache=self.cache)[:, -1]
        return self.decoder(self.tokens, self.enc, self.enc_lens)[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Rows (N,) of the self-attention state, in place (beams move within their utterance)."""
        self.tokens = self.tokens[index]
        if self.cache is not None:
            self.cache.reorder(index)

    def select(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (M,) (any rows, e.g. the unfinished ones): the batch shrinks to M."""
        self.tokens = self.tokens[index]
        if self.cache is not None:
            select_cache_rows(self.cache, index)
        else:
            self.enc, self.enc_lens = self.enc[index], self.enc_lens[index]


def select_cache_rows(cache: KVCache, index: torch.Tensor) -> None:
    """Shrink (or reorder) every buffer of ``cache`` to rows ``index`` (M,); only filled positions are copied."""
    n = cache.length
    for bufs in (cache.self_k, cache.self_v):
        for i, buf in enumerate(bufs):
            new = buf.new_zeros((index.shape[0], *buf.shape[1:]))
            new[:, :, :n] = buf[index, :, :n]
            bufs[i] = new
    for bufs in (cache.cross_k, cache.cross_v):
        for i, buf in enumerate(bufs):
            bufs[i] = buf[index].contiguous()
    cache.memory_mask = cache.memory_mask[index]


class StaticStepper:
    """One-token decoder steps on fixed-shape buffers; replayed as a CUDA graph when ``cuda_graph``.

    The prompt goes through the decoder's ordinary cache path (its buffers are the static ones), then every
    call of :meth:`next` runs :meth:`_step` on the same tensors: the token buffer (N, 1), the position (a 0-d
    tensor) and the cache buffers (N, H, L, Dh).

    Args:
        model: an :class:`AEDModel` whose decoder layers are pre-LN self-attention, cross-attention and
            feed-forward blocks (what :class:`speech_ed.models.decoder.DecoderLayer` is).
        enc, enc_lens, prompt, max_len: as for :class:`DynamicStepper`.
        cuda_graph: capture the step as a CUDA graph (CUDA tensors only).
    """

    can_select = False

    def __init__(self, model, enc, enc_lens, prompt, max_len: int, cuda_graph: bool = False):
        if cuda_graph and not enc.is_cuda:
            raise ValueError("cuda_graph needs the encoder output on a CUDA device")
        self.decoder = model.decoder
        self.cache = model.decoder.init_cache(enc, enc_lens, max_len)
        self.tokens = prompt
        self.cuda_graph = cuda_graph
        self._graph = None
        self._token = prompt.new_zeros(prompt.shape[0], 1)
        self._position = torch.zeros((), dtype=torch.long, device=enc.device)
        self._frames = torch.arange(max_len, device=enc.device)
        self._logits: torch.Tensor | None = None

    def first(self) -> torch.Tensor:
        out = self.decoder(self.tokens, cache=self.cache)[:, -1]
        self._position.fill_(self.cache.length)
        return out

    def _step(self) -> torch.Tensor:
        """Logits (N, V) for ``self._token`` at ``self._position``; writes its keys/values into the cache."""
        dec, c, pos = self.decoder, self.cache, self._position
        pos_emb = dec.pos.index_select(0, pos.view(1))  # (1, D): a gather, no Python-side slicing
        if hasattr(dec, "embed_tokens"):  # the decoder's own embedding (scaling, norm) when it has one
            x = dec.embed_tokens(self._token, pos_emb)
        else:
            x = dec.embed(self._token) * math.sqrt(dec.dim) + pos_emb.to(dec.embed.weight.dtype)[None]
        self_mask = (self._frames <= pos)[None, None, None, :]  # (1, 1, 1, L)
        for i, layer in enumerate(dec.layers):
            h = layer.self_norm(x)
            new_k, new_v = layer.self_attn.project_kv(h)
            c.self_k[i].index_copy_(2, pos.view(1), new_k)
            c.self_v[i].index_copy_(2, pos.view(1), new_v)
            x = x + layer.self_attn.attend_kv(h, c.self_k[i], c.self_v[i], self_mask)
            h = layer.cross_norm(x)
            x = x + layer.cross_attn.attend_kv(h, c.cross_k[i], c.cross_v[i], c.memory_mask)
            x = x + layer.ff(x)
        return dec.output(dec.norm(x))[:, -1]

    def _capture(self) -> None:
        """Record :meth:`_step` as a CUDA graph (after warm-up runs on a side stream, as CUDA graphs need)."""
        saved = [b.clone() for b in self.cache.self_k + self.cache.self_v]  # warm-up writes are undone below
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        # autocast's weight-cast cache would hand the graph tensors freed after capture
        ctx = (torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype is not None
               else contextlib.nullcontext())
        with ctx, torch.cuda.graph(self._graph):
            self._logits = self._step()
        for buf, old in zip(self.cache.self_k + self.cache.self_v, saved):
            buf.copy_(old)

    def next(self, new: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.cat([self.tokens, new[:, None]], dim=1)
        self._token.copy_(new[:, None])
        if self.cuda_graph:
            if self._graph is None:
                self._capture()
            self._graph.replay()
            out = self._logits.clone()
        else:
            out = self._step()
        self._position.add_(1)
        self.cache.length += 1
        return out

    def reorder(self, index: torch.Tensor) -> None:
        """Rows (N,) of the self-attention state, in place (the graph keeps reading the same buffers)."""
        self.tokens = self.tokens[index]
        for buf in self.cache.self_k + self.cache.self_v:
            buf.copy_(buf[index])

    def select(self, index: torch.Tensor) -> None:
        raise RuntimeError("StaticStepper has fixed shapes; it cannot drop rows (check can_select)")


def make_stepper(model, enc, enc_lens, prompt, max_len: int, use_cache: bool = True, static: bool = False,
                 cuda_graph: bool = False):
    """The stepper for these options: static (eager or CUDA graph) needs the cache; else dynamic."""
    if (static or cuda_graph) and use_cache:
        return StaticStepper(model, enc, enc_lens, prompt, max_len, cuda_graph=cuda_graph)
    return DynamicStepper(model, enc, enc_lens, prompt, max_len, use_cache)
