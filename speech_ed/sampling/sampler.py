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

Exact resume in constant time: ``state_dict(consumed=k)`` holds the planner's buffered cuts, counters and
random generator, the stream position (:mod:`speech_ed.sampling.stream`) and the steps already planned but not
yet consumed by training (a DataLoader prefetches ahead of the step that is checkpointed). Its size is bounded
by ``buffer_size``; ``load_state_dict`` seeks the manifest instead of replaying the epoch.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset.sampling.base import CutSampler
from lhotse.serialization import decode_json_line, deserialize_item

from speech_ed.sampling.assignment import FILTERED, BucketAssigner
from speech_ed.sampling.bins import BucketBins, estimate_bucket_bins
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes
from speech_ed.sampling.planner import EpochPlanner, Step
from speech_ed.sampling.stream import open_stream

STRATEGIES = ("random", "1d", "2d")
RECENT_STEPS = 256  # steps remembered for state_dict(consumed=...): more than any DataLoader prefetches


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
        # SortaGrad's first epoch batches by duration group only, mixing the group's token sub-buckets: trained
        # from scratch on 2D (token-homogeneous) batches, the small model stayed on the CTC blank plateau in
        # the runs we measured, while duration-only batches left it (docs/BENCHMARKS.md, section 1). Cuts
        # are still assigned (and dropped) by the 2D bins, so both kinds of epoch train on the same cuts.
        self.warmup_plan: Optional[SamplingPlan] = None
        if sortagrad and strategy == "2d":
            groups = bins.duration_groups()
            self._group_of = [g for g, (_, a, e) in enumerate(groups) for _ in range(a, e)]
            self._group_start = [a for _, a, _ in groups]
            warm_sizes = None if batch_sizes is None else [min(batch_sizes[a:e]) for _, a, e in groups]
            self.warmup_plan = build_plan("1d", bins.to_1d(), warm_sizes, max_duration_s, quadratic_duration_s,
                                          strict, self.world_size, buffer_size, shuffle, drop_last)
        self.cuts = cuts
        self._stream = open_stream(cuts)
        self.num_tokens = num_tokens
        self.strategy = strategy
        self.sortagrad = sortagrad
        self._cursor = None  # the stream being read this epoch
        self._source: Optional[Iterator] = None  # (cut, duration, tokens, bucket, status) over the cursor
        self._queue: deque = deque()  # restored steps that training had not consumed yet
        self._recent: deque = deque(maxlen=RECENT_STEPS)  # (index, step) of the last steps handed out
        self._restored: Optional[dict] = None
        self._epoch_started = False
        self._untouched_epoch: Optional[int] = None  # epoch just started by __iter__, no step handed out yet
        self.last_bucket: Optional[int] = None  # bucket of the last step (-1: end-of-epoch mixed batches)
        self._steps_done = 0

    @staticmethod
    def _estimate_1d_bins(cuts: CutSet, num_buckets: int, limit: int) -> BucketBins:
        durations = np.fromiter((c.duration for _, c in zip(range(limit), cuts)), dtype=np.float64)
        bins = estimate_bucket_bins(durations, num_buckets=num_buckets, method="equal")
        # Estimated from a sample: let the last bucket take anything longer instead of dropping it.
        return BucketBins(bins.durations[:-1] + [float("inf")], method="equal")

    @property
    def active_plan(self) -> SamplingPlan:
        """The plan of the current epoch: the duration-only warm-up plan in a 2D SortaGrad first epoch."""
        return self.warmup_plan if self.warmup_plan is not None and self.epoch == 0 else self.plan

    def _items(self, cursor) -> Iterator[tuple]:
        assign, count = self.plan.assigner.assign, self.num_tokens if self.plan.uses_tokens else None
        group_of = self._group_of if self.active_plan is self.warmup_plan else None
        keep = self._filter_fn
        for cut in cursor:
            if not keep(cut):  # lhotse's sampler.filter(predicate); counted as dropped_filtered
                yield None, cut.duration, 0, -1, FILTERED
                continue
            tokens = count(cut) if count is not None else 0
            bucket, status = assign(cut.duration, tokens)
            if group_of is not None and bucket >= 0:
                bucket = group_of[bucket]
            yield BufferedCut(cut, getattr(cursor, "last_line", None)), cut.duration, tokens, bucket, status

    def _epoch_order(self):
        if self._stream.kind == "eager" and self.shuffle:
            return epoch_permutation(len(self._stream.eager), self.seed, self.epoch)
        return None

    def __iter__(self) -> "BucketingSampler":
        if self._untouched_epoch == self.epoch and self._restored is None:
            # torch's multi-worker DataLoader calls iter(sampler) twice before its first batch: keep the epoch
            # (and a just-restored state) instead of starting it again
            return self
        restored, self._restored = self._restored, None
        self._just_restored_state = False
        self._queue.clear()
        self._recent.clear()
        planner = self.active_plan.planner
        if restored is not None and restored["epoch"] == self.epoch:
            self._cursor = self._stream.open(self._epoch_order(), restored["position"])
            planner.load_state_dict(restored["planner"], decode=_decode_cut)
            self._queue.extend(Step(b, [[(_decode_cut(k), d, t, bb) for k, d, t, bb in x] for x in batches])
                               for b, batches in restored["pending"])
            self._steps_done = restored["steps_done"]
        else:
            if restored is not None:
                warnings.warn(f"sampler state is from epoch {restored['epoch']} but epoch {self.epoch} starts: "
                              "starting the epoch from its beginning")
            self._cursor = self._stream.open(self._epoch_order(), None)
            planner.start(epoch_rng(self.seed, self.epoch), shortest_first=self.sortagrad and self.epoch == 0)
            self._steps_done = 0
        self._source = self._items(self._cursor)
        self._epoch_started = True
        self._untouched_epoch = self.epoch
        return self

    def __next__(self) -> CutSet:
        if self._source is None:
            iter(self)
        self._untouched_epoch = None
        if self._queue:
            step = self._queue.popleft()
        else:
            step = self.active_plan.planner.next_step(self._source)
            if step is None:
                raise StopIteration
        self._steps_done += 1
        self._recent.append((self._steps_done, step))
        self.last_bucket = step.bucket
        if step.bucket >= 0 and self.active_plan is self.warmup_plan:
            self.last_bucket = self._group_start[step.bucket]  # a 2D index: the duration group's first bucket
        batch = step.batches[self.rank]
        earlier = {item[0].get().id for r in range(self.rank) for item in step.batches[r]}
        cuts = [item[0].get() for item in batch]
        cuts = [c if c.id not in earlier else c.with_id(f"{c.id}_dup{self.rank}") for c in cuts]
        selected = CutSet.from_cuts(cuts)
        self._log_diagnostics(selected)
        for transform in self._transforms:
            selected = transform(selected)
        selected.bucket = self.last_bucket  # read by the dataset into batch["bucket"] (logged per step)
        return selected

    @property
    def steps_done(self) -> int:
        """Steps of the current epoch handed out so far (after a restore: consumed before the checkpoint)."""
        return self._steps_done

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of the current epoch, summed over all ranks (every rank computes all ranks' batches)."""
        return self.active_plan.planner.summary()

    def state_dict(self, consumed: Optional[int] = None) -> dict[str, Any]:
        """The sampler's state after the ``consumed``-th step of the epoch (default: every step handed out).

        Args:
            consumed: steps of this epoch that training has finished; the steps handed out after it
                (prefetched by the DataLoader) are stored and handed out again first after a restore.

        The state holds the stream position, the planner (buffered cuts as manifest lines, counters, random
        generator)
        and the pending steps: its size and the time to restore it do not depend on the position.
        """
        sd = super().state_dict()
        sd.update({"strategy": self.strategy, "kind": self._stream.kind})
        if not self._epoch_started:
            sd.update({"position": None, "planner": None, "pending": [], "steps_done": 0, "finished": False})
            return sd
        done = self._steps_done if consumed is None else int(consumed)
        handed = [(i, s) for i, s in self._recent if i > done]
        if done < self._steps_done and (not self._recent or self._recent[0][0] > done + 1):
            raise RuntimeError(f"sampler state requested after step {done}, but only the last {RECENT_STEPS} "
                               f"of {self._steps_done} steps are remembered; lower DataLoader prefetching")
        pending = [s for _, s in handed] + list(self._queue)
        planner = self.active_plan.planner
        self._stream.prepare_resume()
        sd.update({"position": self._cursor.position, "planner": planner.state_dict(encode=_encode_cut),
                   "pending": [[s.bucket, [[(_encode_cut(it[0]), it[1], it[2], it[3]) for it in b]
                                           for b in s.batches]] for s in pending],
                   "steps_done": done, "finished": planner.finished and not pending})
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next ``__iter__`` continues after its last consumed step."""
        state_dict = dict(state_dict)
        strategy = state_dict.pop("strategy")
        if strategy != self.strategy:
            raise ValueError(f"state_dict is from strategy {strategy!r}, this sampler uses {self.strategy!r}")
        kind = state_dict.pop("kind")
        if kind != self._stream.kind:
            raise ValueError(f"state_dict is from a {kind!r} CutSet, this sampler reads a {self._stream.kind!r} one")
        for key in ("world_size", "seed"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state_dict[key]} but this run has {getattr(self, key)}; "
                                 "an exact resume needs the same value (or start afresh: trainer.resume_from=null)")
        restored = {k: state_dict.pop(k) for k in ("position", "planner", "pending", "steps_done", "finished")}
        state_dict.pop("rank", None)
        state_dict["rank"] = self.rank  # every rank restores rank 0's state: all ranks plan the same steps
        super().load_state_dict(state_dict)
        restored["epoch"] = self.epoch
        if restored["finished"]:  # the epoch had ended: the next one starts from its beginning
            self.set_epoch(self.epoch + 1)
            restored = None
        elif restored["planner"] is None:
            restored = None
        self._restored = restored
        self._steps_done = restored["steps_done"] if restored is not None else 0
        self._source = None
        self._epoch_started = False
        self._untouched_epoch = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # open files and generators do not pickle; a copy starts a fresh epoch
        state.update(_source=None, _cursor=None, _epoch_started=False, _untouched_epoch=None, _queue=deque(),
                     _recent=deque(maxlen=RECENT_STEPS))
        return state

    @property
    def remaining_duration(self) -> Optional[float]:
        return None

    @property
    def remaining_cuts(self) -> Optional[int]:
        return None

    @property
    def num_cuts(self) -> Optional[int]:
        return None if self._stream.eager is None else len(self._stream.eager)


class BufferedCut:
    """A buffered cut and its manifest line: checkpoints store the line (no re-serialisation), and a restored
    cut is decoded only when its batch is handed out, so restoring a full buffer costs next to nothing."""

    __slots__ = ("cut", "line")

    def __init__(self, cut, line: Optional[str] = None):
        self.cut, self.line = cut, line

    def get(self):
        if self.cut is None:
            self.cut = deserialize_item(decode_json_line(self.line))
        return self.cut

    def encode(self) -> str:
        if self.line is None:
            self.line = json.dumps(self.cut.to_dict(), ensure_ascii=False)
        return self.line


def _encode_cut(key: BufferedCut) -> str:
    return key.encode()


def _decode_cut(line: str) -> BufferedCut:
    return BufferedCut(None, line)
