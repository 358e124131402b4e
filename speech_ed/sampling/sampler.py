"""``BucketingSampler``: random, 1D or 2D bucketing over (lazy) CutSets, synchronised across ranks.

Usage::

    sampler = BucketingSampler(cuts, num_tokens=lambda c: count_decoder_tokens(c, tok), strategy="2d",
                               bins=load_bucket_bins("bucket_bins.yaml"),
                               batch_sizes=load_bucket_batch_sizes("bucket_batch_sizes.yaml", bins))
    loader = DataLoader(dataset, sampler=sampler, batch_size=None)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...          # the dataset receives one CutSet per batch

lhotse's ``DynamicBucketingSampler`` cannot be reused for this: its 2D support needs a custom constraint
(which disables its state_dict), it emits one partial batch per bucket at the end of an epoch (150 buckets =>
150 extra batches), and it measures nothing it drops. The planning logic lives in
:mod:`speech_ed.sampling.planner`, shared with the padding simulation.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset.sampling.base import CutSampler

from speech_ed.sampling.assignment import FILTERED, BucketAssigner
from speech_ed.sampling.bins import BucketBins, estimate_bucket_bins
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes
from speech_ed.sampling.planner import EpochPlanner

STRATEGIES = ("random", "1d", "2d")


@dataclass
class SamplingPlan:
    """Everything but the data: which buckets exist, how cuts are assigned and how big batches are."""

    strategy: str
    assigner: BucketAssigner
    planner: EpochPlanner
    uses_tokens: bool


def build_plan(strategy: str, bins: Optional[BucketBins] = None, batch_sizes: Optional[list[int]] = None,
               max_duration_s: Optional[float] = None, quadratic_duration_s: Optional[float] = None,
               strict: bool = True, world_size: int = 1, buffer_size: int = 20000, shuffle: bool = True,
               drop_last: bool = False) -> SamplingPlan:
    """Check the settings together (before any data is read) and build the assigner and planner.

    Raises:
        ValueError: naming the field and the fix, e.g. a batch-size list of the wrong length.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
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
    planner = EpochPlanner(policy, upper, world_size=world_size, buffer_size=buffer_size, shuffle=shuffle,
                           drop_last=drop_last, sort_tail=strategy != "random")
    return SamplingPlan(strategy, assigner, planner, uses_tokens=strategy == "2d")


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """The planner's generator: a function of (seed, epoch) only, identical on every rank."""
    return random.Random(int(seed) * 1_000_003 + int(epoch))


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Order in which an eager (in-memory) manifest is streamed in a shuffled epoch."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class BucketingSampler(CutSampler):
    """Yields one ``CutSet`` per step for this rank; all ranks draw from the same bucket at every step.

    Args:
        cuts: eager or lazy CutSet (lazy manifests stream through a buffer of ``buffer_size`` cuts).
        num_tokens: decoder tokens of a cut (prompt included); required for strategy '2d'.
        bins: bucket bins; '1d' estimates 30 equal-duration buckets when ``None``.
        strategy: 'random', '1d' or '2d'.
        batch_sizes: one fixed batch size per bucket (OOMptimizer output); overrides ``max_duration_s``.
        max_duration_s: padding-aware budget ``batch size x longest cut <= max_duration_s``.
        quadratic_duration_s: optional penalty, a cut of d seconds counts as d + d^2 / q.
        strict: drop 2D misfits and TPS outliers (True) or promote them to a larger bucket.
        shuffle: random order (eager manifests are permuted each epoch; draws inside buckets are random).
        seed: base seed; epoch e uses (seed, e) on every rank.
        buffer_size: cuts held in the buckets at most.
        world_size, rank: data-parallel layout (inferred like lhotse when None).
        drop_last: drop the end-of-epoch leftovers instead of packing them (counted).
        sortagrad: the first epoch draws the shortest ready bucket first.
        num_buckets: buckets for the 1D estimate when ``bins`` is None.
        num_cuts_for_bins_estimate: cuts read for that estimate (its last bucket is unbounded).

    After each batch, ``last_bucket`` is the bucket it was drawn from (the same on every rank), and ``stats``
    counts the epoch's cuts seen, yielded and dropped by reason.
    """

    def __init__(self, cuts: CutSet, num_tokens: Optional[Callable[[Cut], int]] = None,
                 bins: Optional[BucketBins] = None, strategy: str = "2d",
                 batch_sizes: Optional[list[int]] = None,
                 max_duration_s: Optional[float] = None, quadratic_duration_s: Optional[float] = None,
                 strict: bool = True, shuffle: bool = True, seed: int = 0, buffer_size: int = 20000,
                 world_size: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False,
                 sortagrad: bool = False, num_buckets: int = 30, num_cuts_for_bins_estimate: int = 10000):
        super().__init__(shuffle=shuffle, drop_last=drop_last, world_size=world_size, rank=rank, seed=seed)
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int (every rank needs the same one), got {seed!r}")
        if strategy == "1d" and bins is None:
            bins = self._estimate_1d_bins(cuts, num_buckets, num_cuts_for_bins_estimate)
        self.plan = build_plan(strategy, bins, batch_sizes, max_duration_s, quadratic_duration_s, strict,
                               self.world_size, buffer_size, shuffle, drop_last)
        if self.plan.uses_tokens and num_tokens is None:
            raise ValueError("strategy '2d' needs num_tokens (a callable counting a cut's decoder tokens)")
        if self.plan.planner.min_buffer_size() > buffer_size:
            warnings.warn(f"buffer_size={buffer_size} is below the {self.plan.planner.min_buffer_size()} "
                          "cuts needed to make every bucket ready at once; expect forced partial steps "
                          "(sampler.stats['forced_steps'])")
        self.cuts = cuts
        self._eager = None if cuts.is_lazy else list(cuts)  # eager manifests are permuted each epoch
        self.num_tokens = num_tokens
        self.strategy = strategy
        self.sortagrad = sortagrad
        self._steps: Optional[Iterator] = None
        self.last_bucket: Optional[int] = None  # bucket of the last step (-1: end-of-epoch mixed batches)
        self._steps_done = 0
        self._resume_steps = 0

    @staticmethod
    def _estimate_1d_bins(cuts: CutSet, num_buckets: int, limit: int) -> BucketBins:
        durations = np.fromiter((c.duration for _, c in zip(range(limit), cuts)), dtype=np.float64)
        bins = estimate_bucket_bins(durations, num_buckets=num_buckets, method="equal")
        # Estimated from a sample: let the last bucket take anything longer instead of dropping it.
        return BucketBins(bins.durations[:-1] + [float("inf")], method="equal")

    def _items(self) -> Iterator[tuple]:
        cuts = self.cuts
        if self._eager is not None and self.shuffle:
            cuts = (self._eager[i] for i in epoch_permutation(len(self._eager), self.seed, self.epoch))
        assign, count = self.plan.assigner.assign, self.num_tokens if self.plan.uses_tokens else None
        keep = self._filter_fn
        for cut in cuts:
            if not keep(cut):  # lhotse's sampler.filter(predicate); counted as dropped_filtered
                yield cut, cut.duration, 0, -1, FILTERED
                continue
            tokens = count(cut) if count is not None else 0
            bucket, status = assign(cut.duration, tokens)
            yield cut, cut.duration, tokens, bucket, status

    def __iter__(self) -> "BucketingSampler":
        skip = self._resume_steps if self._just_restored_state else 0
        self._just_restored_state = False
        self._resume_steps = 0
        rng = epoch_rng(self.seed, self.epoch)
        shortest_first = self.sortagrad and self.epoch == 0
        self._steps = self.plan.planner.plan(self._items(), rng, shortest_first=shortest_first)
        self._steps_done = 0
        for _ in range(skip):  # best-effort resume: replay the epoch's plan without building batches
            next(self._steps)
            self._steps_done += 1
        return self

    def __next__(self) -> CutSet:
        if self._steps is None:
            iter(self)
        step = next(self._steps)
        self._steps_done += 1
        self.last_bucket = step.bucket
        batch = step.batches[self.rank]
        earlier = {item[0].id for r in range(self.rank) for item in step.batches[r]}
        cuts = [item[0] if item[0].id not in earlier else item[0].with_id(f"{item[0].id}_dup{self.rank}")
                for item in batch]
        selected = CutSet.from_cuts(cuts)
        self._log_diagnostics(selected)
        for transform in self._transforms:
            selected = transform(selected)
        return selected

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of the current epoch, summed over all ranks (every rank computes all ranks' batches)."""
        return self.plan.planner.summary()

    def state_dict(self) -> dict[str, Any]:
        """Epoch and steps consumed; restoring replays the epoch's plan up to there (O(epoch) cost)."""
        sd = super().state_dict()
        sd.update({"strategy": self.strategy, "steps_done": self._steps_done})
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        strategy = state_dict.pop("strategy")
        if strategy != self.strategy:
            raise ValueError(f"state_dict is from strategy {strategy!r}, this sampler uses {self.strategy!r}")
        steps = state_dict.pop("steps_done")
        super().load_state_dict(state_dict)
        self._resume_steps = steps

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_steps"] = None  # generators do not pickle; a copy starts a fresh epoch
        return state

    @property
    def remaining_duration(self) -> Optional[float]:
        return None

    @property
    def remaining_cuts(self) -> Optional[int]:
        return None

    @property
    def num_cuts(self) -> Optional[int]:
        return None if self._eager is None else len(self._eager)
