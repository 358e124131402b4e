"""Multi-head attention: plain, relative-position (Transformer-XL style, as in FastConformer) and cross.

Shapes: B batch, H heads, Tq queries, Tk keys, D width, Dh = D / H.

Attention is ``softmax(Q K^T / sqrt(Dh)) V`` written as matmuls (``impl='matmul'``): on CPU this is faster to
train than ``F.scaled_dot_product_attention``, whose flash-CPU backward is slow. ``impl='sdpa'`` uses the
fused kernel; ``impl='auto'`` picks SDPA on CUDA and matmuls elsewhere.
Masks are boolean, True = may attend, broadcastable to (B, H, Tq, Tk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embeddings (N, dim) for float positions (N,): sin on even, cos on odd channels."""
    inv = torch.exp(torch.arange(0, dim, 2, device=positions.device).float() * (-math.log(10000.0) / dim))
    ang = positions.float()[:, None] * inv[None, :]
    out = torch.zeros(positions.shape[0], dim, device=positions.device)
    out[:, 0::2] = torch.sin(ang)
    out[:, 1::2] = torch.cos(ang)
    return out


def attend(q, k, v, mask, impl="matmul", dropout=0.0, bias=None):
    """Scaled dot-product attention.

    Args:
        q: (B, H, Tq, Dh); k, v: (B, H, Tk, Dh).
        mask: bool, broadcastable to (B, H, Tq, Tk), True = attend; or None.
        impl: 'matmul', 'sdpa' or 'auto'.
        dropout: attention dropout probability (pass 0 in eval).
        bias: optional additive scores (B|1, H, Tq, Tk), already divided by sqrt(Dh) (relative positions).

    Returns:
        (B, H, Tq, Dh).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    if impl == "sdpa" or (impl == "auto" and q.is_cuda):
        attn_mask = mask
        if bias is not None:
            attn_mask = bias.to(q.dtype)
            if mask is not None:
                attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if dropout > 0:
        weights = F.dropout(weights, dropout)
    return torch.matmul(weights, v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value inputs (self- or cross-attention).

    Args:
        dim: D, width of queries and output.
        heads: H.
        dropout: attention-weight dropout.
        impl: see :func:`attend`.
        kv_dim: width of the key/value input (default D).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "matmul", kv_dim: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dropout, self.impl = heads, dropout, impl
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim or dim, dim)
        self.value = nn.Linear(kv_dim or dim, dim)
        self.out = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, Dh)."""
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, Tk, Dh) of x (B, Tk, Dkv) (cached once per utterance in cross-attention)."""
        return self.split(self.key(x)), self.split(self.value(x))

    def attend_kv(self, x, k, v, mask, bias=None, q=None):
        """Attend queries from x (B, Tq, D) to given k, v (B, H, Tk, Dh). Returns (B, Tq, D)."""
        q = self.split(self.query(x)) if q is None else q
        p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, self.impl, p, bias)  # (B, H, Tq, Dh)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, Tq, D) attends to kv (B, Tk, D_kv) under mask; returns (B, Tq, D)."""
        k, v = self.project_kv(kv)
        return self.attend_kv(x, k, v, mask)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Turn scores against relative positions into scores against key positions.

    Args:
        x: (B, H, T, 2T-1), column j holding relative position (T-1) - j.

    Returns:
        (B, H, T, T) where [i, j] is x at relative position i - j.
    """
    b, h, t, n = x.shape
    x = F.pad(x, (1, 0)).view(b, h, n + 1, t)[:, :, 1:].reshape(b, h, t, n)
    return x[..., : n // 2 + 1]


class RelPositionMultiHeadAttention(MultiHeadAttention):
    """Self-attention with Transformer-XL relative positions (content bias u, position bias v)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "matmul"):
        super().__init__(dim, heads, dropout, impl)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, dim // heads))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, dim // heads))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention.

        Args:
            x: (B, T, D).
            pos_emb: (2T-1, D) sinusoids of relative positions T-1 ... -(T-1).
            mask: bool (B, 1, 1, T) key padding mask, True = valid.

        Returns:
            (B, T, D).
        """
        q = self.split(self.query(x))  # (B, H, T, Dh)
        k, v = self.project_kv(x)
        p = self.split(self.linear_pos(pos_emb.to(x.dtype))[None])  # (1, H, 2T-1, Dh)
        q_v = q + self.pos_bias_v[None, :, None, :].to(q.dtype)
        bias = rel_shift(torch.matmul(q_v, p.transpose(-1, -2))) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        q_u = q + self.pos_bias_u[None, :, None, :].to(q.dtype)
        return self.attend_kv(x, k, v, mask, bias=bias, q=q_u)
