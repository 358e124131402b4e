"""``speech-ed transcribe --ckpt model.pt a.wav b.flac ... [--language es] [--batch-size 16]``.

Prints ``<file>\\t<text>`` per file, in the order given. A file that cannot be read (missing, corrupt, empty)
gets an ``ERROR`` line naming the problem; the other files are still transcribed. Exit status 1 if any failed.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def read_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform at ``sample_rate`` (resampled with scipy when needed); raises ValueError."""
    import soundfile as sf

    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
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
                     max_len_ratio: float = 0.6) -> list[tuple[str, str | None, str | None]]:
    """Returns ``(path, text, error)`` per path, in input order."""
    from speech_ed.data.prompt import build_prompt
    from speech_ed.models import greedy_decode

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
        enc, enc_lens = model.encode(audio, lens)
        prompt = torch.tensor([prompt_ids] * len(chunk))
        hyps = greedy_decode(model, enc, enc_lens, prompt, tokenizer.eos_id, max_len_ratio=max_len_ratio)
        for (i, _), h in zip(chunk, hyps):
            results[i] = (paths[i], tokenizer.decode(h), None)
    return [results[i] for i in range(len(paths))]


def add_arguments(parser):
    parser.add_argument("--ckpt", required=True, help="model.pt written by `speech-ed train`")
    parser.add_argument("--language", default=None, help="source language (default: the model's first)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ... anything libsndfile reads)")


def main(args) -> int:
    from speech_ed.evaluation.model_io import load_for_inference

    model, tokenizer = load_for_inference(args.ckpt)
    language = args.language or (tokenizer.languages[0] if tokenizer.languages else "en")
    if not tokenizer.has_language(language):
        print(f"speech-ed transcribe: language {language!r} unknown to this model (it knows {tokenizer.languages})",
              file=sys.stderr)
        return 2
    failed = 0
    for path, text, error in transcribe_files(model, tokenizer, args.files, language, args.batch_size):
        if error:
            failed += 1
            print(f"{path}\tERROR: {error}")
        else:
            print(f"{path}\t{text}")
    return 1 if failed else 0
