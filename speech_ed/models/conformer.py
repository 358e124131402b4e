"""(Fast)Conformer encoder: subsampled frames -> contextual frames.

Block (pre-LN, macaron): x + 1/2 FF(x) -> x + MHSA(x) -> x + Conv(x) -> x + 1/2 FF(x) -> LN.
Conv module: LN, Linear D -> 2D, GLU, depthwise conv (kernel K, zero past each utterance), LN (or BatchNorm,
``ModelDims.conv_norm``), SiLU, Linear.
Shapes: B batch, T frames after subsampling, D encoder width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speech_ed.models.attention import MultiHeadAttention, RelPositionMultiHeadAttention, sinusoids
from speech_ed.models.dims import ModelDims


class FeedForward(nn.Module):
    """LN, Linear D -> mult*D, activation, dropout, Linear back, dropout."""

    def __init__(self, dim: int, mult: int, dropout: float, activation: str = "silu"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)
        self.act = nn.SiLU() if activation == "silu" else nn.ReLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), without the residual."""
        return self.dropout(self.down(self.dropout(self.act(self.up(self.norm(x))))))


class ConvModule(nn.Module):
    """Conformer convolution module; LayerNorm after the depthwise conv by default (``norm='layer'``), or
    BatchNorm (``'batch'``: FastConformer's, whose statistics include padded frames in training)."""

    def __init__(self, dim: int, kernel_size: int, dropout: float, norm: str = "layer"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.batch_norm = norm == "batch"
        self.conv_norm = nn.BatchNorm1d(dim) if self.batch_norm else nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), pad (B, T, 1) bool True on padded frames -> (B, T, D) without the residual."""
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        y = y.masked_fill(pad, 0.0)
        y = self.depthwise(y.transpose(1, 2))  # (B, D, T)
        y = self.conv_norm(y).transpose(1, 2) if self.batch_norm else self.conv_norm(y.transpose(1, 2))
        y = self.pointwise_out(F.silu(y))
        return self.dropout(y)


class ConformerBlock(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        d, p = dims.encoder_dim, dims.dropout
        self.ff1 = FeedForward(d, dims.encoder_ff_mult, p)
        self.attn_norm = nn.LayerNorm(d)
        impl = dims.attention_impl
        if dims.pos_enc == "rel":
            self.attn = RelPositionMultiHeadAttention(d, dims.num_encoder_heads, p, impl)
        else:
            self.attn = MultiHeadAttention(d, dims.num_encoder_heads, p, impl)
        self.conv = ConvModule(d, dims.conv_kernel_size, p, dims.conv_norm)
        self.ff2 = FeedForward(d, dims.encoder_ff_mult, p)
        self.out_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(p)

    def forward(self, x, mask, pad, pos_emb=None):
        """x (B, T, D); mask (B, 1, 1, T) True = valid key; pad (B, T, 1) True = padded; pos_emb (2T-1, D)."""
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        if pos_emb is not None:
            x = x + self.dropout(self.attn(h, pos_emb, mask))
        else:
            x = x + self.dropout(self.attn(h, h, mask))
        x = x + self.conv(x, pad)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class ConformerEncoder(nn.Module):
    """Conformer blocks over subsampled frames.

    The subsampler output is scaled by sqrt(D) before positions are added (absolute sinusoids for
    ``pos_enc='abs'``; relative sinusoids fed to every attention layer for ``pos_enc='rel'``): without the
    scaling CTC does not leave its blank plateau (calibration notes). ``ModelDims.xscaling=False`` skips it
    (NeMo's ``xscaling: false``, as in the released Canary configs).
    """

    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dim = dims.encoder_dim
        self.pos_enc = dims.pos_enc
        self.xscale = math.sqrt(dims.encoder_dim) if dims.xscaling else None
        self.dropout = nn.Dropout(dims.dropout)
        self.blocks = nn.ModuleList(ConformerBlock(dims) for _ in range(dims.num_encoder_layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode.

        Args:
            x: (B, T, D) subsampled frames.
            lengths: (B,) int64 valid frames.

        Returns:
            (B, T, D); values on padded frames are meaningless (mask them).
        """
        b, t, d = x.shape
        if self.xscale is not None:
            x = x * self.xscale
        pos_emb = None
        if self.pos_enc == "abs":
            x = x + sinusoids(torch.arange(t, device=x.device), d).to(x.dtype)[None]
        else:
            pos_emb = sinusoids(torch.arange(t - 1, -t, -1, device=x.device), d)  # (2T-1, D)
        x = self.dropout(x)
        valid = torch.arange(t, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        mask = valid[:, None, None, :]
        pad = ~valid[:, :, None]
        for block in self.blocks:
            x = block(x, mask, pad, pos_emb)
        return x
