"""``build_plan``: check bucketing settings together, before any data is read, and build assigner + planner."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from speech_ed.sampling.assignment import BucketAssigner
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes
from speech_ed.sampling.planner import EpochPlanner, needed_buffer_size
from speech_ed.sampling.strategies import BUCKETING_STRATEGIES, BucketingStrategy


@dataclass
class SamplingPlan:
    """Everything but the data: which buckets exist, how cuts are assigned and how big batches are."""

    strategy: BucketingStrategy
    assigner: BucketAssigner
    planner: EpochPlanner
    uses_tokens: bool

    def needed_buffer_size(self) -> int:
        """Buffered cuts for every rank to be able to draw a full batch from one bucket."""
        p = self.planner
        return needed_buffer_size(p.policy, p.upper, p.world_size)


def build_plan(strategy: BucketingStrategy, bins: Optional[BucketBins] = None,
               batch_sizes: Optional[list[int]] = None,
               max_duration_s: Optional[float] = None, quadratic_duration_s: Optional[float] = None,
               strict: bool = True, world_size: int = 1, buffer_size: Optional[int] = 20000,
               shuffle: bool = True, drop_last: bool = False) -> SamplingPlan:
    """Check the settings together (before any data is read) and build the assigner and planner.

    ``buffer_size=None`` leaves the planner's buffer to be sized by the caller once the epoch size is known
    (:func:`speech_ed.sampling.planner.resolve_buffer_size`).

    Raises:
        ValueError: naming the field and the fix, e.g. a batch-size list of the wrong length.
    """
    if strategy not in BUCKETING_STRATEGIES:
        raise ValueError(f"strategy must be one of {BUCKETING_STRATEGIES}, got {strategy!r}")
    if strategy == "random":
        if batch_sizes is not None:
            raise ValueError("strategy 'random' has no buckets; give max_duration_s instead of batch_sizes")
        bins = None
    elif bins is None:
        raise ValueError(f"strategy {strategy!r} needs bucket bins (speech-ed estimate-bins)")
    elif strategy == "2d" and not bins.is_2d:
        raise ValueError("strategy '2d' needs 2D bins ([max_duration_s, max_tokens] per bucket); these are "
                         "1D. Re-run `speech-ed estimate-bins --sub-buckets M` or use strategy '1d'")
    elif strategy == "1d" and bins.is_2d:
        if batch_sizes is not None and len(batch_sizes) == bins.num_buckets:
            raise ValueError("strategy '1d' with 2D bins uses their duration groups, but batch_sizes has one "
                             "entry per 2D bucket; use strategy '2d' or 1D batch sizes")
        bins = bins.to_1d()
    assigner = BucketAssigner(bins, strict=strict)
    if batch_sizes is not None:
        if len(batch_sizes) != assigner.num_buckets:
            raise ValueError(f"batch_sizes has {len(batch_sizes)} entries but the bins have "
                             f"{assigner.num_buckets} buckets; bucket_batch_sizes.yaml must be measured on "
                             "the same bucket_bins.yaml (re-run `speech-ed oomptimize`)")
        policy = FixedBatchSizes(batch_sizes, assigner)
    elif max_duration_s is not None:
        policy = DurationBudget(max_duration_s, quadratic_duration_s)
    else:
        raise ValueError("give per-bucket batch_sizes (bucket_batch_sizes.yaml) or max_duration_s")
    upper = [assigner.upper_duration(b) for b in range(assigner.num_buckets)]
    planner = EpochPlanner(policy, upper, world_size=world_size, buffer_size=buffer_size or 1, shuffle=shuffle,
                           drop_last=drop_last, sort_tail=strategy != "random")
    return SamplingPlan(strategy, assigner, planner, uses_tokens=strategy == "2d")


@dataclass
class WarmupPlan:
    """SortaGrad's first epoch on 2D bins: batches by duration group, the group's smallest batch size."""

    plan: SamplingPlan
    group_of: np.ndarray
    """(num 2D buckets,) the duration group of each 2D bucket."""
    group_start: list[int]
    """First 2D bucket of each group (the bucket index a warm-up step reports)."""


def build_warmup_plan(bins: BucketBins, batch_sizes: Optional[list[int]] = None,
                      max_duration_s: Optional[float] = None, quadratic_duration_s: Optional[float] = None,
                      strict: bool = True, world_size: int = 1, buffer_size: Optional[int] = 20000,
                      shuffle: bool = True, drop_last: bool = False) -> WarmupPlan:
    """The duration-only plan of a 2D SortaGrad first epoch (cuts are still assigned by the 2D bins)."""
    groups = bins.duration_groups()
    group_of = np.array([g for g, (_, a, e) in enumerate(groups) for _ in range(a, e)])
    warm_sizes = None if batch_sizes is None else [min(batch_sizes[a:e]) for _, a, e in groups]
    plan = build_plan("1d", bins.to_1d(), warm_sizes, max_duration_s, quadratic_duration_s, strict, world_size,
                      buffer_size, shuffle, drop_last)
    return WarmupPlan(plan, group_of, [a for _, a, _ in groups])


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The planner's generator: a function of (seed, epoch) only, identical on every rank."""
    return random.Random(int(seed) * 1_000_003 + int(epoch))
