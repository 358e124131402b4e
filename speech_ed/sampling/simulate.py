"""One epoch of a sampler on lengths alone: the very planner :class:`BucketingSampler` uses, with integer keys,
so a simulated epoch's batches are the sampler's batches (tested); and lhotse's ``DynamicBucketingSampler`` on
the same lengths, for comparison.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import numpy as np

from speech_ed.sampling.assignment import count_statuses
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.lengths import Lengths
from speech_ed.sampling.padding import padding_stats
from speech_ed.sampling.plan import build_plan, epoch_rng
from speech_ed.sampling.planner import resolve_buffer_size
from speech_ed.sampling.sources import epoch_permutation


def simulate_epoch(lengths: Lengths, strategy: str, bins: Optional[BucketBins] = None,
                   batch_sizes: Optional[list[int]] = None, max_duration_s: Optional[float] = None,
                   quadratic_duration_s: Optional[float] = None, strict: bool = True, seed: int = 0,
                   epoch: int = 0, world_size: int = 1, buffer_size: Optional[int] = None, shuffle: bool = True,
                   drop_last: bool = False, sortagrad: bool = False,
                   ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run one epoch of :class:`~speech_ed.sampling.sampler.BucketingSampler` on lengths alone.

    The manifest is treated as eager (permuted per epoch when ``shuffle``), exactly as the sampler does for an
    in-memory CutSet. Batches of all ranks are returned, step by step (rank 0 first). ``buffer_size=None``
    sizes the buffer as the sampler does.

    Returns:
        ``(report, batches)``: the report holds the sampler's counters and :func:`padding_stats`; ``batches``
        are index arrays into ``lengths``.
    """
    start = time.perf_counter()
    plan = build_plan(strategy, bins, batch_sizes, max_duration_s, quadratic_duration_s, strict, world_size,
                      buffer_size, shuffle, drop_last)
    n = len(lengths)
    plan.planner.buffer_size = resolve_buffer_size(buffer_size, plan.needed_buffer_size(), n)
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
    report["buffer_size"] = plan.planner.buffer_size
    report["needed_buffer_size"] = plan.needed_buffer_size()
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
