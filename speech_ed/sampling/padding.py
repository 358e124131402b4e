"""Padding statistics of a list of batches (no audio is read).

Definitions (per batch of B cuts, padded to the longest one):

* input padding  = 1 - sum(frames) / (B x max frames), frames = round(duration / frame_shift_s);
* output padding = 1 - sum(tokens) / (B x max tokens), tokens = the full decoder sequence, prompt included.

Reported ratios are over the whole epoch: padded frames (tokens) of all batches over all frames (tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FRAME_SHIFT_S = 0.01


def padding_stats(durations: np.ndarray, tokens: np.ndarray, batches: list[np.ndarray],
                  frame_shift_s: float = FRAME_SHIFT_S) -> dict[str, Any]:
    """Padding of a list of batches.

    Args:
        durations: (N,) seconds per cut.
        tokens: (N,) decoder tokens per cut.
        batches: index arrays into ``durations``/``tokens``, one per batch.

    Returns:
        ``num_batches``, ``mean_batch_size``, ``input_padding``, ``output_padding``, frame/token totals and
        ``batch_sizes`` (list).
    """
    batches = [np.asarray(b, dtype=np.int64) for b in batches if len(b)]
    if not batches:
        return {"num_batches": 0, "mean_batch_size": 0.0, "input_padding": 0.0, "output_padding": 0.0,
                "real_frames": 0, "padded_frames": 0, "real_tokens": 0, "padded_tokens": 0, "batch_sizes": []}
    sizes = np.array([len(b) for b in batches])
    flat = np.concatenate(batches)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    seconds = np.asarray(durations, dtype=np.float64)[flat]
    frames = np.maximum(np.rint(seconds / frame_shift_s), 1).astype(np.int64)
    toks = np.asarray(tokens, dtype=np.int64)[flat]
    frame_slots = int(np.sum(np.maximum.reduceat(frames, starts) * sizes))
    token_slots = int(np.sum(np.maximum.reduceat(toks, starts) * sizes))
    real_frames, real_tokens = int(frames.sum()), int(toks.sum())
    return {
        "num_batches": int(len(batches)),
        "mean_batch_size": float(sizes.mean()),
        "input_padding": 1.0 - real_frames / frame_slots if frame_slots else 0.0,
        "output_padding": 1.0 - real_tokens / token_slots if token_slots else 0.0,
        "real_frames": real_frames, "padded_frames": frame_slots - real_frames,
        "real_tokens": real_tokens, "padded_tokens": token_slots - real_tokens,
        "batch_sizes": sizes.tolist(),
    }


def batch_padding(durations: list[float], tokens: list[int], frame_shift_s: float = FRAME_SHIFT_S,
                  ) -> tuple[float, float]:
    """(input padding, output padding) of a single batch, as defined in the module docstring."""
    batch = [np.arange(len(durations))]
    stats = padding_stats(np.asarray(durations), np.asarray(tokens), batch, frame_shift_s)
    return stats["input_padding"], stats["output_padding"]
