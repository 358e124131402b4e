"""Log-mel frontend and SpecAugment, computed inside the model in plain torch.

Shapes: B batch, S audio samples, T frames (10 ms), F mel features.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def hz_to_mel(hz: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    """Mel value of frequencies (float64 tensor). 'htk': 2595 log10(1 + f/700). 'slaney' (Slaney's Auditory
    Toolbox, librosa's default): 3 mels per 200 Hz up to 1 kHz, then log-spaced with 27 steps per factor 6.4."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / (200.0 / 3.0)
    logarithmic = 15.0 + torch.log(torch.clamp(hz, min=1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz >= 1000.0, logarithmic, linear)


def mel_to_hz(mel: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10 ** (mel / 2595.0) - 1.0)
    linear = mel * (200.0 / 3.0)
    logarithmic = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (mel - 15.0))
    return torch.where(mel >= 15.0, logarithmic, linear)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, scale: str = "htk", norm: str = "none") -> torch.Tensor:
    """Triangular mel filters, shape (n_fft // 2 + 1, n_mels), from 0 Hz to Nyquist.

    ``scale`` 'htk' or 'slaney' places the filter edges; ``norm`` 'slaney' divides each filter by half its
    bandwidth in Hz (equal area), 'none' leaves peaks at 1. Computed in float64, returned as float32.
    """
    n_freqs = n_fft // 2 + 1
    fft_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    # Nyquist's mel value as a Python float: the model is also built on the meta device, which has no .item()
    top = float(hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64, device="cpu"), scale))
    mels = torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64)
    hz = mel_to_hz(mels, scale)  # (n_mels + 2,)
    left, center, right = hz[:-2], hz[1:-1], hz[2:]
    f = fft_freqs[:, None]
    up = (f - left) / (center - left)
    down = (right - f) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (right - left))
    return weights.float()


def frontend_options(dims) -> dict:
    """The :class:`LogMelFrontend` keyword arguments a :class:`~speech_ed.models.dims.ModelDims` asks for."""
    names = ("n_fft", "window_periodic", "preemphasis", "dither", "mel_scale", "mel_norm", "log_guard",
             "log_guard_type", "feature_norm", "drop_last_frame")
    return {name: getattr(dims, name) for name in names}


class LogMelFrontend(nn.Module):
    """Waveform -> per-utterance normalised log-mel features.

    25 ms Hann window, 10 ms hop, ``n_fft`` 512, zero padding at both ends (not reflection, so an utterance's
    features do not depend on how much padding the batch adds after it), log with a 2^-24 guard, then mean and
    variance normalisation per utterance and per feature over the valid frames only. Padded frames are zero.
    The keyword options (see :class:`~speech_ed.models.dims.ModelDims`) reproduce NeMo's
    AudioToMelSpectrogramPreprocessor: symmetric window, pre-emphasis, Slaney mel filters, unbiased std and
    one valid frame fewer; the defaults are this project's own front end.
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 512, *, window_periodic: bool = True,
                 preemphasis: float = 0.0, dither: float = 0.0, mel_scale: str = "htk", mel_norm: str = "none",
                 log_guard: float = 2.0**-24, log_guard_type: str = "add", feature_norm: str = "per_feature",
                 drop_last_frame: bool = False):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = int(0.025 * sample_rate)
        self.hop_length = int(0.010 * sample_rate)
        self.preemphasis, self.dither = preemphasis, dither
        self.log_guard, self.log_guard_type = log_guard, log_guard_type
        self.feature_norm, self.drop_last_frame = feature_norm, drop_last_frame
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=window_periodic),
                             persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(n_mels, n_fft, sample_rate, mel_scale, mel_norm),
                             persistent=False)

    def num_frames(self, audio_lens: torch.Tensor) -> torch.Tensor:
        """Valid frames per utterance, (B,) int64, for (B,) sample counts."""
        frames = torch.div(audio_lens, self.hop_length, rounding_mode="floor")
        return frames if self.drop_last_frame else frames + 1

    def _waveform(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> torch.Tensor:
        """Dither (training only) and pre-emphasis; samples past each utterance are zero afterwards."""
        if not (self.dither > 0 and self.training) and self.preemphasis == 0:
            return audio
        x = audio + self.dither * torch.randn_like(audio) if self.dither > 0 and self.training else audio
        if self.preemphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - self.preemphasis * x[:, :-1]], dim=1)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < audio_lens[:, None]
        return x.masked_fill(~valid, 0.0)

    def _normalize(self, feats: torch.Tensor, valid: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """feats (B, T, F), valid (B, T, 1), n (B, 1, 1) valid frames -> normalised (B, T, F), 0 when padded."""
        feats = feats.masked_fill(~valid, 0.0)
        if self.feature_norm == "none":
            return feats
        mean = feats.sum(dim=1, keepdim=True) / n.clamp(min=1)
        sq = (feats - mean).masked_fill(~valid, 0.0).square().sum(dim=1, keepdim=True)
        if self.feature_norm == "per_feature":
            std = torch.sqrt(sq / n.clamp(min=1) + 1e-5)
        else:  # unbiased std plus 1e-5 (0 for a one-frame utterance, whose variance is undefined)
            std = torch.nan_to_num(torch.sqrt(sq / (n - 1)), nan=0.0, posinf=0.0) + 1e-5
        return ((feats - mean) / std).masked_fill(~valid, 0.0)

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
                self._waveform(audio.float(), audio_lens), self.n_fft, hop_length=self.hop_length,
                win_length=self.win_length, window=self.window.float(), center=True, pad_mode="constant",
                return_complex=True,
            )  # (B, n_fft/2+1, T)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(power.transpose(1, 2), self.mel_fb.float())  # (B, T, F)
            if self.log_guard_type == "clamp":
                feats = torch.log(torch.clamp(mel, min=self.log_guard))
            else:
                feats = torch.log(mel + self.log_guard)
            feat_lens = self.num_frames(audio_lens).clamp(max=feats.shape[1])
            frames = torch.arange(feats.shape[1], device=feats.device)
            valid = (frames[None, :] < feat_lens[:, None])[..., None]  # (B, T, 1)
            feats = self._normalize(feats, valid, feat_lens[:, None, None].float())
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
