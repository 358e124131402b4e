"""Transcribe audio files with a ``model.pt``: read, batch by length, decode (the evaluation decode path).

Usage::

    for path, text, error in transcribe_model_file("exp/espeak_multilingual/default/model.pt", ["a.wav"], "es"):
        ...                                                    # what ``speech-ed transcribe`` prints
    model, tokenizer = load_for_inference("exp/espeak_multilingual/default/model.pt")
    for path, text, error in transcribe_files(model, tokenizer, ["a.wav"], "es", options=DecodeOptions()):
        ...
"""

from __future__ import annotations

import numpy as np
import torch

from speech_ed.models.decoding import DecodeOptions


def read_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform at ``sample_rate`` (resampled with scipy when needed); raises ValueError."""
    import soundfile as sf

    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001  (libsndfile raises several types; each becomes one clear error)
        raise ValueError(f"cannot read audio ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    audio = audio.mean(axis=1)
    if audio.size == 0:
        raise ValueError("the file holds no audio samples")
    if not np.isfinite(audio).all():
        raise ValueError("the audio contains NaN or infinite samples")
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        audio = resample_poly(audio, sample_rate // g, sr // g).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(audio))


@torch.inference_mode()
def transcribe_files(model, tokenizer, paths: list[str], language: str, batch_size: int = 16, pnc: bool = False,
                     max_len_ratio: float = 0.6, options: DecodeOptions | None = None,
                     dtype: torch.dtype | None = None) -> list[tuple[str, str | None, str | None]]:
    """Returns ``(path, text, error)`` per path, in input order.

    Args:
        options: how to decode (default: attention greedy with ``max_len_ratio``).
        dtype: autocast dtype (None: the model's own).
    """
    from speech_ed.data.prompt import build_prompt
    from speech_ed.evaluation.decoding import decode_audio
    from speech_ed.evaluation.evaluate import _autocast

    options = options or DecodeOptions(mode="attention", max_len_ratio=max_len_ratio)
    device = next(model.parameters()).device
    sr = model.dims.sample_rate
    results: dict[int, tuple[str, str | None, str | None]] = {}
    waves = []
    for i, p in enumerate(paths):
        try:
            waves.append((i, read_audio(p, sr)))
        except ValueError as e:
            results[i] = (p, None, str(e))
    waves.sort(key=lambda x: -x[1].numel())  # similar lengths together: less padding
    prompt_ids = build_prompt(tokenizer, language, language, "transcribe", pnc)
    for start in range(0, len(waves), batch_size):
        chunk = waves[start : start + batch_size]
        lens = torch.tensor([w.numel() for _, w in chunk])
        audio = torch.zeros(len(chunk), int(lens.max()))
        for j, (_, w) in enumerate(chunk):
            audio[j, : w.numel()] = w
        prompt = torch.tensor([prompt_ids] * len(chunk), device=device)
        with _autocast(device, dtype):
            out = decode_audio(model, audio.to(device), lens.to(device), prompt, tokenizer.eos_id,
                               tokenizer.pad_id, options, with_ctc=False)
        for (i, _), h in zip(chunk, out.hyps):
            results[i] = (paths[i], tokenizer.decode(h), None)
    return [results[i] for i in range(len(paths))]


class TranscribeError(ValueError):
    """A language the model does not know, or a decoding mode it cannot run; nothing was decoded."""


def transcribe_model_file(model_path, paths: list[str], language: str | None = None, batch_size: int = 16,
                          mode: str | None = None, beam_size: int | None = None, ctc_weight: float | None = None
                          ) -> list[tuple[str, str | None, str | None]]:
    """``speech-ed transcribe``: load a model file and transcribe ``paths`` with :func:`transcribe_files`.

    Args:
        model_path: ``model.pt`` (or a ``.nemo``).
        language: source language (default: the model's first).
        mode, beam_size, ctc_weight: decoding as ``eval.*`` (None: the :class:`speech_ed.config.EvalConfig`
            default), the way ``speech-ed evaluate`` decodes.

    Returns:
        ``(path, text, error)`` per path, in input order.

    Raises:
        TranscribeError: unknown language, or a mode that needs a CTC head the model lacks.
    """
    import dataclasses

    from speech_ed.config import EvalConfig
    from speech_ed.evaluation.decoding import decode_options
    from speech_ed.evaluation.model_io import load_for_inference

    model, tokenizer = load_for_inference(model_path)
    language = language or (tokenizer.languages[0] if tokenizer.languages else "en")
    if not tokenizer.has_language(language):
        raise TranscribeError(f"language {language!r} unknown to this model (it knows {tokenizer.languages})")
    chosen = {"mode": mode, "beam_size": beam_size, "ctc_weight": ctc_weight}
    eval_cfg = dataclasses.replace(EvalConfig(), **{k: v for k, v in chosen.items() if v is not None})
    try:
        options = decode_options(eval_cfg, has_ctc=model.ctc is not None)
    except ValueError as e:
        raise TranscribeError(str(e)) from None
    return transcribe_files(model, tokenizer, paths, language, batch_size, options=options)
