"""Convolutional subsampling: (B, T, F) features -> (B, T / factor, D) frames.

Two kinds, both with 3x3 kernels, stride 2 and padding 1 in time and frequency (so lengths become
ceil(T / 2) per conv):

* ``conv2d``: ``log2(factor)`` plain Conv2d + ReLU layers (the thin, CPU-cheap choice);
* ``dw_striding``: FastConformer's depthwise-separable striding: one full Conv2d + ReLU, then
  (depthwise 3x3 stride 2, pointwise 1x1, ReLU) for the remaining stages.

Then a Linear from channels x reduced frequencies to D. Frames past each utterance's valid length are zeroed
after every conv so that padding added by a longer batch neighbour never leaks into valid frames.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def subsampled_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """(B,) valid frames after ``log2(factor)`` stride-2 convs with padding 1 (ceil division each time)."""
    for _ in range(int(math.log2(factor))):
        lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
    return lengths


class ConvSubsampling(nn.Module):
    """Strided conv subsampler.

    Args:
        kind: 'conv2d' or 'dw_striding'.
        factor: 4 or 8 (time and frequency reduction).
        in_features: F, mel bins.
        channels: conv channels.
        out_dim: D, model width.
        init_scale: multiplier on the output Linear's initial weights (ModelDims.subsampling_init_scale).
    """

    def __init__(self, kind: str, factor: int, in_features: int, channels: int, out_dim: int,
                 init_scale: float = 1.0):
        super().__init__()
        if factor not in (4, 8):
            raise ValueError(f"subsampling_factor must be 4 or 8, got {factor}")
        if kind not in ("conv2d", "dw_striding"):
            raise ValueError(f"subsampling must be 'conv2d' or 'dw_striding', got {kind!r}")
        self.factor = factor
        stages = int(math.log2(factor))
        self.stages = nn.ModuleList()
        in_ch = 1
        for i in range(stages):
            if kind == "conv2d" or i == 0:
                layers = [nn.Conv2d(in_ch, channels, 3, stride=2, padding=1)]
            else:
                layers = [
                    nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels),
                    nn.Conv2d(channels, channels, 1),
                ]
            self.stages.append(nn.Sequential(*layers, nn.ReLU(inplace=True)))
            in_ch = channels
        freq = in_features
        for _ in range(stages):
            freq = (freq - 1) // 2 + 1
        self.out = nn.Linear(channels * freq, out_dim)
        with torch.no_grad():  # see ModelDims.subsampling_init_scale
            self.out.weight.mul_(init_scale)
            self.out.bias.mul_(init_scale)
        # channels_last weights and activations: oneDNN's CPU convolutions run 2-5x faster than on NCHW.
        self.stages.to(memory_format=torch.channels_last)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsample.

        Args:
            feats: (B, T, F) features, zero after each utterance.
            feat_lens: (B,) int64 valid frames.

        Returns:
            x (B, T', D) and lengths (B,) int64, T' = ceil(T / factor) (per conv: ceil(T / 2)).
        """
        x = feats[:, None].contiguous(memory_format=torch.channels_last)  # (B, 1, T, F)
        lens = feat_lens
        for stage in self.stages:
            x = stage(x)
            lens = torch.div(lens - 1, 2, rounding_mode="floor") + 1
            keep = torch.arange(x.shape[2], device=x.device)[None, :] < lens[:, None]  # (B, T')
            keep = keep[:, None, :, None].to(x.dtype)
            # In place when no graph is recorded: saves a pass over the largest activations of the encoder.
            x = x * keep if torch.is_grad_enabled() else x.mul_(keep)
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        return x, lens
