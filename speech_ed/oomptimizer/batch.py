"""Synthetic worst-case batches: every example as long as the bucket allows, no padding anywhere.

A bucket's upper bounds are ``(max_duration_s, max_tokens)`` where ``max_tokens`` is the full decoder sequence
as :func:`speech_ed.data.prompt.count_decoder_tokens` counts it (5 prompt tokens + text + end-of-text). A
training batch of that bucket is never larger in any dimension than the batch built here, so a size that fits
here fits every real batch of the bucket.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from speech_ed.data.prompt import PROMPT_LEN

TOKENS_PER_SECOND_1D = 12.0
"""Decoder tokens assumed per second for 1D (duration-only) bins: a conservative transcript length."""


def bucket_shapes(max_duration_s: float, max_tokens: int, sample_rate: int = 16000) -> dict[str, int]:
    """Sequence lengths of a worst-case example.

    Returns:
        ``samples`` S, ``decoder_len`` U - 1 (decoder input and targets) and ``ctc_len`` (text tokens only:
        the sequence minus the prompt and the end-of-text token, at least 1).
    """
    if not max_duration_s > 0:
        raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2 (a decoder sequence has a prompt and an end), "
                         f"got {max_tokens}")
    return {
        "samples": round(max_duration_s * sample_rate),
        "decoder_len": max_tokens - 1,
        "ctc_len": max(max_tokens - PROMPT_LEN - 1, 1),
    }


def tokens_for_1d_bin(max_duration_s: float, tokens_per_second: float = TOKENS_PER_SECOND_1D) -> int:
    """Decoder tokens for a duration-only bin: ``ceil(tps x seconds)`` text tokens plus prompt and end."""
    return math.ceil(tokens_per_second * max_duration_s) + PROMPT_LEN + 1


def make_worst_case_batch(batch_size: int, max_duration_s: float, max_tokens: int, vocab_size: int,
                          sample_rate: int = 16000, device: Optional[torch.device | str] = None,
                          generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """A batch of ``batch_size`` examples at the bucket's bounds, in the layout the training step uses.

    Args:
        batch_size: B.
        max_duration_s: bucket duration bound (seconds).
        max_tokens: bucket decoder-token bound U (prompt + text + end-of-text).
        vocab_size: V; token ids are drawn from [0, V) (CTC targets from [1, V): 0 is the blank).
        sample_rate: audio samples per second.
        device: where to create the tensors (a fake device under FakeTensorMode works too).
        generator: optional RNG for the token ids and audio.

    Returns:
        dict with ``audio`` (B, S) float32 N(0, 1), ``audio_lens`` (B,) = S, ``tokens_in`` (B, U-1),
        ``targets`` (B, U-1) (all scored, no -100), ``ctc_targets`` (B, N), ``ctc_target_lens`` (B,) = N,
        all integer tensors int64.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    shp = bucket_shapes(max_duration_s, max_tokens, sample_rate)
    b, s, u, n = batch_size, shp["samples"], shp["decoder_len"], shp["ctc_len"]
    kw = {"device": device}
    return {
        "audio": torch.randn(b, s, generator=generator, **kw),
        "audio_lens": torch.full((b,), s, dtype=torch.long, **kw),
        "tokens_in": torch.randint(0, vocab_size, (b, u), generator=generator, **kw),
        "targets": torch.randint(0, vocab_size, (b, u), generator=generator, **kw),
        "ctc_targets": torch.randint(1, vocab_size, (b, n), generator=generator, **kw),
        "ctc_target_lens": torch.full((b,), n, dtype=torch.long, **kw),
    }
