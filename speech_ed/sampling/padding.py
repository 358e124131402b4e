"""Padding statistics and one-epoch sampler simulations on lengths alone (no audio is read).

Lengths are measured once per (manifest, token counter) into numpy arrays -- counting decoder tokens with
SentencePiece is the slow part -- and can be cached in a ``.npz``. The simulation runs the very planner the
sampler uses (:mod:`speech_ed.sampling.planner`) with integer keys, so its batches are the sampler's batches.

Definitions (per batch of B cuts, padded to the longest one):

* input padding  = 1 - sum(frames) / (B x max frames), frames = round(duration / frame_shift_s);
* output padding = 1 - sum(tokens) / (B x max tokens), tokens = the full decoder sequence, prompt included.

Reported ratios are over the whole epoch: padded frames (tokens) of all batches over all frames (tokens).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
from lhotse.cut import Cut

from speech_ed.sampling.assignment import count_statuses
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.sampler import build_plan, epoch_permutation, epoch_rng

FRAME_SHIFT_S = 0.01


@dataclass
class Lengths:
    """Per-cut lengths of a manifest, in manifest order.

    Attributes:
        ids: (N,) cut ids.
        durations: (N,) seconds, float64.
        tokens: (N,) decoder tokens, int64 (zeros when no token counter was given).
    """

    ids: np.ndarray
    durations: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.durations)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write an ``.npz`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=self.ids, durations=self.durations, tokens=self.tokens)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Lengths":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["ids"], z["durations"], z["tokens"])


def file_digest(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def lengths_cache_key(manifest: Union[str, os.PathLike], *parts: str) -> str:
    """Cache key from the manifest's path, size and mtime plus other parts (tokenizer digest, prompt...)."""
    st = os.stat(manifest)
    text = "|".join([str(Path(manifest).resolve()), str(st.st_size), str(st.st_mtime_ns), *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_lengths(cuts: Iterable[Cut], num_tokens: Optional[Callable[[Cut], int]] = None,
                    cache_path: Optional[Union[str, os.PathLike]] = None) -> Lengths:
    """Durations and decoder-token counts of every cut, computed once.

    Args:
        cuts: any iterable of cuts (a lazy CutSet streams).
        num_tokens: decoder tokens of a cut (prompt included); None stores zeros.
        cache_path: an ``.npz`` to read if it exists, else to write (the caller makes the name unique, e.g.
            with :func:`lengths_cache_key`).
    """
    if cache_path is not None and Path(cache_path).is_file():
        return Lengths.load(cache_path)
    ids, durations, tokens = [], [], []
    for cut in cuts:
        ids.append(cut.id)
        durations.append(cut.duration)
        tokens.append(num_tokens(cut) if num_tokens is not None else 0)
    lengths = Lengths(np.asarray(ids, dtype=str), np.asarray(durations, dtype=np.float64),
                      np.asarray(tokens, dtype=np.int64))
    if cache_path is not None:
        lengths.save(cache_path)
    return lengths


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


def simulate_epoch(lengths: Lengths, strategy: str, bins: Optional[BucketBins] = None,
                   batch_sizes: Optional[list[int]] = None, max_duration_s: Optional[float] = None,
                   quadratic_duration_s: Optional[float] = None, strict: bool = True, seed: int = 0,
                   epoch: int = 0, world_size: int = 1, buffer_size: int = 20000, shuffle: bool = True,
                   drop_last: bool = False, sortagrad: bool = False,
                   ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run one epoch of :class:`~speech_ed.sampling.sampler.BucketingSampler` on lengths alone.

    The manifest is treated as eager (permuted per epoch when ``shuffle``), exactly as the sampler does for an
    in-memory CutSet. Batches of all ranks are returned, step by step (rank 0 first).

    Returns:
        ``(report, batches)``: the report holds the sampler's counters and :func:`padding_stats`; ``batches``
        are index arrays into ``lengths``.
    """
    start = time.perf_counter()
    plan = build_plan(strategy, bins, batch_sizes, max_duration_s, quadratic_duration_s, strict, world_size,
                      buffer_size, shuffle, drop_last)
    n = len(lengths)
    tokens_in = lengths.tokens if plan.uses_tokens else np.zeros(n, dtype=np.int64)
    buckets, statuses = plan.assigner.assign_many(lengths.durations, tokens_in)
    order = epoch_permutation(n, seed, epoch) if shuffle else np.arange(n)
    items = zip(order.tolist(), lengths.durations[order].tolist(), tokens_in[order].tolist(),
                buckets[order].tolist(), statuses[order].tolist())
    batches, step_buckets = [], []
    for step in plan.planner.plan(items, epoch_rng(seed, epoch), shortest_first=sortagrad and epoch == 0):
        step_buckets.append(step.bucket)
        batches.extend(np.fromiter((it[0] for it in b), dtype=np.int64, count=len(b)) for b in step.batches)
    report: dict[str, Any] = {"strategy": strategy}
    report.update(plan.planner.summary())
    report["num_buckets"] = plan.assigner.num_buckets
    report["assignment"] = count_statuses(statuses)
    report.update(padding_stats(lengths.durations, lengths.tokens, batches))
    report["num_steps"] = len(step_buckets)
    report["constraint"] = plan.planner.policy.describe()
    report["world_size"] = world_size
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report, batches


def simulate_lhotse_dynamic_bucketing(lengths: Lengths, max_duration_s: float, num_buckets: int = 30,
                                      quadratic_duration_s: Optional[float] = None, seed: int = 0,
                                      buffer_size: int = 20000, shuffle: bool = True,
                                      ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One epoch of lhotse's own ``DynamicBucketingSampler`` (its defaults otherwise) on the same lengths.

    The cuts are fed in the same permuted order as :func:`simulate_epoch` (lhotse itself does not permute a
    manifest; this is the kindest order for it). Cuts are light audio-less stand-ins with the real durations.
    """
    from lhotse import CutSet, MonoCut
    from lhotse.dataset import DynamicBucketingSampler

    start = time.perf_counter()
    n = len(lengths)
    order = epoch_permutation(n, seed, 0) if shuffle else np.arange(n)
    cuts = CutSet.from_cuts(MonoCut(id=str(i), start=0.0, duration=float(lengths.durations[i]), channel=0)
                            for i in order.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager-CutSet and small-buffer warnings
        sampler = DynamicBucketingSampler(cuts, max_duration=max_duration_s, num_buckets=num_buckets,
                                          quadratic_duration=quadratic_duration_s, shuffle=shuffle, seed=seed,
                                          buffer_size=buffer_size, world_size=1, rank=0)
        batches = [np.array([int(c.id) for c in batch], dtype=np.int64) for batch in sampler]
    report: dict[str, Any] = {"strategy": "lhotse", "sampler": "lhotse.DynamicBucketingSampler",
                              "num_buckets": num_buckets, "cuts_seen": n,
                              "cuts_dropped": n - int(sum(len(b) for b in batches))}
    report.update(padding_stats(lengths.durations, lengths.tokens, batches))
    report["constraint"] = {"max_duration_s": max_duration_s, "quadratic_duration_s": quadratic_duration_s}
    report["seconds"] = round(time.perf_counter() - start, 3)
    return report, batches
