"""Search every bucket with a probe and collect what each trial measured."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from speech_ed.oomptimizer.probes import GiB, Probe, TrialResult
from speech_ed.oomptimizer.search import search_buckets


@dataclass
class BucketResult:
    """The search outcome of one bucket."""

    bucket: int
    max_duration_s: float
    max_tokens: int
    batch_size: int
    """Largest size that fitted (0: not even one example fits)."""
    peak_bytes: Optional[int]
    """Peak memory measured at ``batch_size``."""
    trials: list[TrialResult] = field(default_factory=list)
    capped: bool = False
    seconds: float = 0.0


def run_oomptimizer(bins: Sequence[tuple[float, int]], probe: Probe, start: int = 32, rel_gap: float = 0.05,
                    max_batch_size: int = 1 << 16, log: Optional[Callable[[str], None]] = None
                    ) -> list[BucketResult]:
    """Find the largest batch size of every bucket, largest bucket first.

    Args:
        bins: ``(max_duration_s, max_tokens)`` per bucket.
        probe: a :class:`speech_ed.oomptimizer.probes.Probe`.
        start, rel_gap, max_batch_size: see :func:`speech_ed.oomptimizer.search.find_max_batch_size`.
        log: called with one line per finished bucket.

    Returns:
        One :class:`BucketResult` per bucket, in the order of ``bins``.
    """
    trials: dict[int, list[TrialResult]] = {b: [] for b in range(len(bins))}
    t_start: dict[int, float] = {}

    def fits(b: int, batch_size: int) -> bool:
        t_start.setdefault(b, time.perf_counter())
        res = probe.trial(batch_size, bins[b][0], bins[b][1])
        trials[b].append(res)
        return res.fits

    out: dict[int, BucketResult] = {}

    def done(b: int, res) -> None:
        ok = [t for t in trials[b] if t.fits and t.batch_size == res.batch_size]
        r = BucketResult(b, float(bins[b][0]), int(bins[b][1]), res.batch_size,
                         ok[-1].peak_bytes if ok else None, trials[b], res.capped,
                         time.perf_counter() - t_start[b])
        out[b] = r
        if log is not None:
            peak = f"{r.peak_bytes / GiB:.3f}" if r.peak_bytes is not None else "-"
            log(f"bucket {b:3d} ({r.max_duration_s:g} s, {r.max_tokens} tokens): batch size {r.batch_size} "
                f"(peak {peak} GiB, {len(r.trials)} trials, {r.seconds:.1f} s)"
                + (" capped" if r.capped else ""))

    search_buckets(bins, fits, start, rel_gap, max_batch_size, on_result=done)
    return [out[b] for b in range(len(bins))]


def apply_safety_margin(batch_sizes: Sequence[int], safety_margin: float) -> list[int]:
    """Shrink every size by ``safety_margin`` (a fraction), never below 1.

    Raises:
        ValueError: margin outside [0, 1), or a bucket where not even one example fits (size 0).
    """
    if not 0.0 <= safety_margin < 1.0:
        raise ValueError(f"--safety-margin must be in [0, 1), got {safety_margin}")
    bad = [i for i, b in enumerate(batch_sizes) if b < 1]
    if bad:
        raise ValueError(f"buckets {bad} do not fit even one example in the memory limit; lower their bounds "
                         "(fewer seconds or tokens per bucket), use a bigger budget, or a smaller model")
    return [max(1, math.floor(b * (1.0 - safety_margin))) for b in batch_sizes]
