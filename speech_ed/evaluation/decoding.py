"""Audio in, token ids out: the decode path that evaluate, transcribe and bench-rtfx all call.

Usage::

    options = decode_options(cfg.eval, has_ctc=model.ctc is not None)     # EvalConfig -> DecodeOptions
    out = decode_audio(model, audio, audio_lens, prompt, tokenizer.eos_id, tokenizer.pad_id, options)
    out.hyps, out.ctc_hyps, out.encoder_seconds, out.decoder_seconds

Shapes: B batch, S samples, P prompt tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from speech_ed.models.decoding import DEFAULT_JOINT, DecodeOptions, ctc_greedy_decode, decode, decode_options

__all__ = ["DEFAULT_JOINT", "DecodeOptions", "DecodedBatch", "decode_audio", "decode_options"]


@dataclass
class DecodedBatch:
    """What :func:`decode_audio` returns: per row the decoded ids, the CTC best path (or None), and timings."""

    hyps: list[list[int]]
    ctc_hyps: list[list[int]] | None
    encoder_seconds: float
    decoder_seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def decode_audio(model, audio: torch.Tensor, audio_lens: torch.Tensor, prompt: torch.Tensor, eos_id: int,
                 blank_id: int, options: DecodeOptions, with_ctc: bool = True,
                 force_lengths: torch.Tensor | None = None, timed: bool = False) -> DecodedBatch:
    """Encode a batch and decode it as ``options`` say.

    Args:
        model: an :class:`AEDModel` in eval mode (under the caller's autocast, if any).
        audio: (B, S) float32 on the model's device; audio_lens: (B,) int64 samples.
        prompt: (B, P) int64 decoder prompt.
        eos_id, blank_id: the tokenizer's end-of-text and CTC blank (pad) ids.
        options: decoding mode and settings.
        with_ctc: also return the CTC best path (models with a CTC head).
        force_lengths: (B,) int64, benchmarks only (greedy attention): exact output lengths.
        timed: synchronise the device around the encoder and decoder so their seconds are exact.

    Returns:
        A :class:`DecodedBatch`.
    """
    device = audio.device
    if timed:
        _sync(device)
    t0 = time.perf_counter()
    enc, enc_lens, ctc_logits = model.encode_with_ctc(audio, audio_lens)
    if timed:
        _sync(device)
    t1 = time.perf_counter()
    hyps = decode(model, enc, enc_lens, prompt, eos_id, options, ctc_logits=ctc_logits, blank_id=blank_id,
                  force_lengths=force_lengths)
    ctc_hyps = None
    if with_ctc and ctc_logits is not None:
        ctc_hyps = hyps if options.mode == "ctc" else ctc_greedy_decode(ctc_logits, enc_lens, blank=blank_id)
    if timed:
        _sync(device)
    t2 = time.perf_counter()
    return DecodedBatch(hyps, ctc_hyps, t1 - t0, t2 - t1)
