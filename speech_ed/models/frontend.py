"""Log-mel frontend and SpecAugment, computed inside the model in plain torch.

Shapes: B batch, S audio samples, T frames (10 ms), F mel features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-scale mel filters, shape (n_fft // 2 + 1, n_mels), from 0 Hz to Nyquist."""

    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    n_freqs = n_fft // 2 + 1
    fft_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,)
    left, center, right = hz[:-2], hz[1:-1], hz[2:]
    f = fft_freqs[:, None]
    up = (f - left) / (center - left)
    down = (right - f) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LogMelFrontend(nn.Module):
    """Waveform -> per-utterance normalised log-mel features.

    25 ms Hann window, 10 ms hop, ``n_fft`` 512, zero padding at both ends (not reflection, so an utterance's
    features do not depend on how much padding the batch adds after it), log with a 2^-24 guard, then mean and
    variance normalisation per utterance and per feature over the valid frames only. Padded frames are zero.
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 512):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = int(0.025 * sample_rate)
        self.hop_length = int(0.010 * sample_rate)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)

    def num_frames(self, audio_lens: torch.Tensor) -> torch.Tensor:
        """Valid frames per utterance, (B,) int64, for (B,) sample counts."""
        return torch.div(audio_lens, self.hop_length, rounding_mode="floor") + 1

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute features.

        Args:
            audio: (B, S) float waveform, zero padded after each utterance.
            audio_lens: (B,) int64 valid samples.

        Returns:
            feats (B, T, F) float32 and feat_lens (B,) int64, with T = S // hop + 1.
        """
        with torch.autocast(audio.device.type, enabled=False):
            spec = torch.stft(
                audio.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                window=self.window.float(), center=True, pad_mode="constant", return_complex=True,
            )  # (B, n_fft/2+1, T)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(power.transpose(1, 2), self.mel_fb.float())  # (B, T, F)
            feats = torch.log(mel + 2.0**-24)
            feat_lens = self.num_frames(audio_lens).clamp(max=feats.shape[1])
            frames = torch.arange(feats.shape[1], device=feats.device)
            valid = (frames[None, :] < feat_lens[:, None])[..., None]  # (B, T, 1)
            n = feat_lens.clamp(min=1)[:, None, None].float()
            feats = feats.masked_fill(~valid, 0.0)
            mean = feats.sum(dim=1, keepdim=True) / n
            var = ((feats - mean).masked_fill(~valid, 0.0).square().sum(dim=1, keepdim=True) / n)
            feats = ((feats - mean) / torch.sqrt(var + 1e-5)).masked_fill(~valid, 0.0)
        return feats, feat_lens


class SpecAugment(nn.Module):
    """Frequency and time masks (value 0 = the normalised mean), drawn per utterance from torch's RNG.

    Time-mask width is at most ``time_mask_ratio`` x the utterance's valid frames. Call only in training.
    """

    def __init__(self, freq_masks: int, freq_mask_width: int, time_masks: int, time_mask_ratio: float):
        super().__init__()
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_ratio = time_masks, time_mask_ratio

    @staticmethod
    def _band_mask(n: int, size: torch.Tensor, max_width: torch.Tensor, count: int) -> torch.Tensor:
        """(B, n) bool: ``count`` random bands per row, each of width <= max_width (B,), inside [0, size)."""
        b = size.shape[0]
        dev = size.device
        width = (torch.rand(b, count, device=dev) * (max_width[:, None].float() + 1)).floor()
        width = torch.minimum(width, size[:, None].float())
        start = (torch.rand(b, count, device=dev) * (size[:, None].float() - width + 1)).floor()
        pos = torch.arange(n, device=dev).float()[None, None, :]
        band = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (B, count, n)
        return band.any(dim=1)

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        """Mask feats (B, T, F) in place of a copy; feat_lens (B,) valid frames. Returns (B, T, F)."""
        b, t, f = feats.shape
        mask = torch.zeros(b, t, f, dtype=torch.bool, device=feats.device)
        if self.freq_masks > 0 and self.freq_mask_width > 0:
            full = torch.full((b,), f, device=feats.device)
            width = torch.full((b,), self.freq_mask_width, device=feats.device)
            mask |= self._band_mask(f, full, width, self.freq_masks)[:, None, :]
        if self.time_masks > 0 and self.time_mask_ratio > 0:
            width = (feat_lens.float() * self.time_mask_ratio).floor().long()
            mask |= self._band_mask(t, feat_lens, width, self.time_masks)[:, :, None]
        return feats.masked_fill(mask, 0.0)
