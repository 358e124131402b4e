"""``BucketingSampler``: random, 1D or 2D bucketing over weighted corpora, synchronised across ranks.

Usage::

    sampler = BucketingSampler(cuts, num_tokens=lambda c: count_decoder_tokens(c, tok), strategy="2d",
                               bins=load_bucket_bins("bucket_bins.yaml"),
                               batch_sizes=load_bucket_batch_sizes("bucket_batch_sizes.yaml", bins))
    # or several corpora: BucketingSampler(sources=[src_a, src_b], weights=[2, 1], ...)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None)
    for epoch in range(n):
        sampler.set_epoch(epoch)
        for batch in loader: ...          # the dataset receives one CutSet per batch

How it scales (docs/SAMPLING.md): every rank plans the whole epoch, for all ranks, on the corpora's lengths
alone (:mod:`speech_ed.sampling.index`, four numbers a cut), so all ranks agree on every step without
communicating and the buffer can be as large as the batch sizes and world size require (sized automatically
when ``buffer_size`` is None). Each cut is assigned to one rank as it enters the buffer, and only that rank
reads its manifest line. Memory per rank: ~100 bytes per buffered cut plus the lines of its own cuts.

lhotse's ``DynamicBucketingSampler`` is not reused: its 2D support needs a custom constraint (which disables
its state_dict), every rank holds every buffered cut, it emits one partial batch per bucket at the end of an
epoch, and it counts nothing it drops.

Exact resume: ``state_dict(consumed=k)`` holds the epoch number, the stream position, the planner (buffered
cuts as positions, counters, random generator) and the steps handed out after step k (prefetched by the
DataLoader). The epoch's cut order is rebuilt from ``(seed, epoch)``; each rank re-reads the lines of its own
buffered cuts by their index offsets, so restoring costs what the buffer holds, not what the epoch has read.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any, Callable, Optional, Sequence

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset.sampling.base import CutSampler

from speech_ed.sampling.assignment import FILTERED
from speech_ed.sampling.bins import BucketBins, estimate_open_1d_bins
from speech_ed.sampling.epoch_stats import bucket_fill, corpus_stats
from speech_ed.sampling.mix import CorpusMix, EpochSequence
from speech_ed.sampling.plan import SamplingPlan, build_plan, build_warmup_plan, epoch_rng
from speech_ed.sampling.planner import Step, resolve_buffer_size
from speech_ed.sampling.sources import source_from_cutset
from speech_ed.sampling.state import pack_steps, unpack_steps
from speech_ed.sampling.strategies import BucketingStrategy

__all__ = ["BucketingSampler", "build_plan", "epoch_rng"]
RECENT_STEPS = 256  # steps remembered for state_dict(consumed=...): more than any DataLoader prefetches


class BucketingSampler(CutSampler):
    """Yields one ``CutSet`` per step for this rank; all ranks draw from the same bucket at every step.

    Args:
        cuts: eager or lazy CutSet (one corpus); or give ``sources``.
        num_tokens: decoder tokens of a cut (prompt included); required for strategy '2d' with ``cuts``
            (sources carry their token counts in their index).
        bins: bucket bins; '1d' estimates 30 equal-duration buckets when ``None``.
        strategy: 'random', '1d' or '2d' (:mod:`speech_ed.sampling.strategies`).
        batch_sizes: one fixed batch size per bucket (OOMptimizer output); overrides ``max_duration_s``.
        max_duration_s: padding-aware budget ``batch size x longest cut <= max_duration_s``.
        quadratic_duration_s: optional penalty, a cut of d seconds counts as d + d^2 / q.
        strict: drop 2D misfits and TPS outliers (True) or promote them to a larger bucket.
        shuffle: random order (eager corpora are permuted each pass; draws inside buckets are random).
        seed: base seed; epoch e uses (seed, e) on every rank.
        buffer_size: cuts held in the buckets at most; None sizes it from the batch sizes and world size.
        world_size, rank: data-parallel layout (inferred like lhotse when None).
        drop_last: drop the end-of-epoch leftovers instead of packing them (counted).
        sortagrad: the first epoch draws the shortest ready bucket first.
        num_buckets: buckets for the 1D estimate when ``bins`` is None.
        num_cuts_for_bins_estimate: cuts read for that estimate (its last bucket is unbounded).
        sources: corpora (:mod:`speech_ed.sampling.sources`, ``speech_ed.data.sources``) instead of ``cuts``.
        weights: share of each source in an epoch's cuts (None: proportional to their sizes).
        cuts_per_epoch: cuts per epoch (None: all sources' cuts once).

    After each batch, ``last_bucket`` is the bucket it was drawn from (the same on every rank), and ``stats``
    counts the epoch's cuts seen, yielded and dropped by reason; ``corpus_stats`` does so per corpus.
    """

    def __init__(self, cuts: Optional[CutSet] = None, num_tokens: Optional[Callable[[Cut], int]] = None,
                 bins: Optional[BucketBins] = None, strategy: BucketingStrategy = "2d",
                 batch_sizes: Optional[list[int]] = None,
                 max_duration_s: Optional[float] = None, quadratic_duration_s: Optional[float] = None,
                 strict: bool = True, shuffle: bool = True, seed: int = 0, buffer_size: Optional[int] = None,
                 world_size: Optional[int] = None, rank: Optional[int] = None, drop_last: bool = False,
                 sortagrad: bool = False, num_buckets: int = 30, num_cuts_for_bins_estimate: int = 10000,
                 sources: Optional[Sequence[Any]] = None, weights: Optional[Sequence[float]] = None,
                 cuts_per_epoch: Optional[int] = None):
        super().__init__(shuffle=shuffle, drop_last=drop_last, world_size=world_size, rank=rank, seed=seed)
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int (every rank needs the same one), got {seed!r}")
        if (cuts is None) == (sources is None):
            raise ValueError("give either cuts or sources")
        if strategy == "1d" and bins is None:
            if cuts is None:
                raise ValueError("strategy '1d' with sources needs bins (speech-ed estimate-bins)")
            durations = np.fromiter((c.duration for _, c in zip(range(num_cuts_for_bins_estimate), cuts)),
                                    dtype=np.float64)
            bins = estimate_open_1d_bins(durations, num_buckets)
        self.plan = build_plan(strategy, bins, batch_sizes, max_duration_s, quadratic_duration_s, strict,
                               self.world_size, buffer_size, shuffle, drop_last)
        if self.plan.uses_tokens and cuts is not None and num_tokens is None:
            raise ValueError("strategy '2d' needs num_tokens (a callable counting a cut's decoder tokens)")
        # SortaGrad's first epoch batches by duration group only, mixing the group's token sub-buckets: trained
        # from scratch on 2D (token-homogeneous) batches, the small model stayed on the CTC blank plateau in
        # the runs we measured, while duration-only batches left it (docs/BENCHMARKS.md, section 1). Cuts
        # are still assigned (and dropped) by the 2D bins, so both kinds of epoch train on the same cuts.
        self.warmup_plan: Optional[SamplingPlan] = None
        if sortagrad and strategy == "2d":
            warmup = build_warmup_plan(bins, batch_sizes, max_duration_s, quadratic_duration_s, strict,
                                       self.world_size, buffer_size, shuffle, drop_last)
            self.warmup_plan, self.group_of, self._group_start = warmup.plan, warmup.group_of, warmup.group_start
        self._requested_buffer = buffer_size
        self.cuts, self.num_tokens, self._given_sources = cuts, num_tokens, sources
        self._weights, self._cuts_per_epoch = weights, cuts_per_epoch
        self.strategy, self.sortagrad = strategy, sortagrad
        self._mix: Optional[CorpusMix] = None
        self._sources: Optional[list] = None
        self._seq: Optional[EpochSequence] = None
        self._reset_epoch_state()
        self._restored: Optional[dict] = None
        self._untouched_epoch: Optional[int] = None  # epoch just started by __iter__, no step handed out yet
        self.last_bucket: Optional[int] = None  # bucket of the last step (-1: end-of-epoch mixed batches)
        self._steps_done = 0

    def _reset_epoch_state(self) -> None:
        self._pos = 0  # next position of the epoch sequence to enter the planner
        self._held: dict[int, Any] = {}  # position -> payload (manifest line) of this rank's buffered cuts
        self._readers: Optional[list] = None
        self._queue: deque = deque()  # restored steps that training had not consumed yet
        self._recent: deque = deque(maxlen=RECENT_STEPS)  # (index, step) of the last steps handed out
        self._epoch_started = False

    # ------------------------------------------------------------------------------------------ the corpora

    @property
    def sources(self) -> list:
        """The corpora (built on first use, so ``filter()`` called after construction is honoured)."""
        if self._sources is None:
            if self._given_sources is not None:
                if self._filter_fn is not None and type(self._filter_fn).__name__ != "_filter_nothing":
                    raise ValueError("filter() needs cuts; with sources, mark skipped cuts in their index")
                self._sources = list(self._given_sources)
            else:
                keep = None if type(self._filter_fn).__name__ == "_filter_nothing" else self._filter_fn
                count = self.num_tokens if self.plan.uses_tokens else None
                self._sources = [source_from_cutset(self.cuts, count, keep)]
        return self._sources

    @property
    def mix(self) -> CorpusMix:
        if self._mix is None:
            sources = self.sources
            orders = [(lambda c, s=s: s.pass_order(c, self.seed, self.shuffle)) for s in sources]
            self._mix = CorpusMix([s.index for s in sources], self._weights, self._cuts_per_epoch, orders)
            for plan in (self.plan, self.warmup_plan):
                if plan is not None:
                    plan.planner.buffer_size = resolve_buffer_size(
                        self._requested_buffer, plan.needed_buffer_size(), self._mix.cuts_per_epoch)
        return self._mix

    @property
    def active_plan(self) -> SamplingPlan:
        """The plan of the current epoch: the duration-only warm-up plan in a 2D SortaGrad first epoch."""
        return self.warmup_plan if self.warmup_plan is not None and self.epoch == 0 else self.plan

    def _epoch_items(self):
        """Bucket and status of every position of the epoch (vectorised), then one item at a time."""
        seq = self._seq
        tokens = seq.tokens if self.plan.uses_tokens else np.zeros(len(seq), dtype=np.int64)
        buckets, statuses = self.plan.assigner.assign_many(seq.durations, tokens)
        skipped = seq.status != 0
        buckets[skipped], statuses[skipped] = -1, FILTERED
        if self.active_plan is self.warmup_plan:
            buckets = np.where(buckets >= 0, self.group_of[np.maximum(buckets, 0)], -1)
        self._buckets, self._statuses = buckets, statuses
        return self._items_from(self._pos)

    def _items_from(self, start: int):
        seq, step = self._seq, 65536
        for lo in range(start, len(seq), step):
            hi = min(lo + step, len(seq))
            for p, d, t, b, s in zip(range(lo, hi), seq.durations[lo:hi].tolist(), seq.tokens[lo:hi].tolist(),
                                     self._buckets[lo:hi].tolist(), self._statuses[lo:hi].tolist()):
                self._pos = p + 1
                yield p, d, t, b, s

    def _on_own(self, key: int) -> None:
        """The planner gave this rank the cut at ``key``: read its line now, while the stream is here."""
        self._held[key] = self._read(key)

    def _read(self, key: int, readers: Optional[list] = None):
        s, rec = int(self._seq.source[key]), int(self._seq.record[key])
        readers = readers if readers is not None else self._readers
        if readers[s] is None:
            readers[s] = self.sources[s].reader()
        return readers[s].get(rec)

    def _close_readers(self, readers: Optional[list]) -> None:
        for r in readers or ():
            if r is not None:
                r.close()

    # ------------------------------------------------------------------------------------------ iteration

    def __iter__(self) -> "BucketingSampler":
        if self._untouched_epoch == self.epoch and self._restored is None:
            # torch's multi-worker DataLoader calls iter(sampler) twice before its first batch: keep the epoch
            # (and a just-restored state) instead of starting it again
            return self
        restored, self._restored = self._restored, None
        self._close_readers(self._readers)
        self._reset_epoch_state()
        mix = self.mix
        self._seq = mix.epoch(self.epoch, self.seed, self.shuffle)
        self._readers = [None] * len(self.sources)
        planner = self.active_plan.planner
        planner.owner, planner.on_own = self.rank, self._on_own
        if restored is not None and restored["epoch"] == self.epoch:
            self._pos = int(restored["position"])
            self._source = self._epoch_items()
            planner.load_state_dict(restored["planner"])
            self._queue.extend(unpack_steps(restored["pending"]))
            self._steps_done = restored["steps_done"]
            self._refetch_own(planner)
        else:
            if restored is not None:
                warnings.warn(f"sampler state is from epoch {restored['epoch']} but epoch {self.epoch} starts: "
                              "starting the epoch from its beginning")
            self._source = self._epoch_items()
            planner.start(epoch_rng(self.seed, self.epoch), shortest_first=self.sortagrad and self.epoch == 0)
            self._steps_done = 0
        self._epoch_started = True
        self._untouched_epoch = self.epoch
        return self

    def _refetch_own(self, planner) -> None:
        """After a restore: read this rank's buffered and pending cuts again, in stream order."""
        mine = {k for k, r in planner.buffered_keys() if r == self.rank}
        mine.update(it[0] for s in self._queue for it in s.batches[self.rank])
        readers = [None] * len(self.sources)
        for key in sorted(mine):
            self._held[key] = self._read(key, readers)
        self._close_readers(readers)

    def __next__(self) -> CutSet:
        if not self._epoch_started:
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
        selected = CutSet.from_cuts(self._materialise(step.batches[self.rank]))
        self._log_diagnostics(selected)
        for transform in self._transforms:
            selected = transform(selected)
        selected.bucket = self.last_bucket  # read by the dataset into batch["bucket"] (logged per step)
        return selected

    def _materialise(self, batch) -> list[Cut]:
        cuts = []
        for it in batch:
            key = it[0]
            payload = self._held.pop(key, None)
            if payload is None:  # another rank's cut, copied because this rank had too few (counted)
                cut = self._materialise_key(key)
                cuts.append(cut.with_id(f"{cut.id}_dup{self.rank}"))
            else:
                cuts.append(self.sources[int(self._seq.source[key])].materialise(payload))
        return cuts

    def _materialise_key(self, key: int) -> Cut:
        readers = [None] * len(self.sources)
        try:
            return self.sources[int(self._seq.source[key])].materialise(self._read(key, readers))
        finally:
            self._close_readers(readers)

    # ------------------------------------------------------------------------------------------ statistics

    @property
    def steps_done(self) -> int:
        """Steps of the current epoch handed out so far (after a restore: consumed before the checkpoint)."""
        return self._steps_done

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of the current epoch, summed over all ranks (every rank plans all ranks' batches)."""
        return self.active_plan.planner.summary()

    def epoch_sequence(self) -> EpochSequence:
        """The current epoch's cut order (built now if the epoch has not started)."""
        return self._seq if self._seq is not None else self.mix.epoch(self.epoch, self.seed, self.shuffle)

    def corpus_stats(self) -> dict[str, dict[str, Any]]:
        """Per corpus: its cuts and hours, what this epoch draws of it, and the skips and drops by reason."""
        return corpus_stats(self)

    def bucket_fill(self) -> dict[str, Any]:
        """How much of an epoch can be drawn bucket by bucket at this world size (:func:`bucket_fill`)."""
        return bucket_fill(self)

    # ------------------------------------------------------------------------------------------ resume

    def state_dict(self, consumed: Optional[int] = None) -> dict[str, Any]:
        """The sampler's state after the ``consumed``-th step of the epoch (default: every step handed out).

        Args:
            consumed: steps of this epoch that training has finished; the steps handed out after it
                (prefetched by the DataLoader) are stored and handed out again first after a restore.

        Its size is bounded by the buffer (positions and lengths as tensors), whatever the position.
        """
        sd = super().state_dict()
        sd.update({"strategy": self.strategy, "format": 2})
        if not self._epoch_started:
            sd.update({"position": None, "planner": None, "pending": None, "steps_done": 0, "finished": False,
                       "mix": None})
            return sd
        done = self._steps_done if consumed is None else int(consumed)
        handed = [(i, s) for i, s in self._recent if i > done]
        if done < self._steps_done and (not self._recent or self._recent[0][0] > done + 1):
            raise RuntimeError(f"sampler state requested after step {done}, but only the last {RECENT_STEPS} "
                               f"of {self._steps_done} steps are remembered; lower DataLoader prefetching")
        pending: list[Step] = [s for _, s in handed] + list(self._queue)
        planner = self.active_plan.planner
        for src in self.sources:
            if hasattr(src, "prepare_resume"):
                src.prepare_resume()
        sd.update({"position": self._pos, "planner": planner.state_dict(), "pending": pack_steps(pending),
                   "steps_done": done, "finished": planner.finished and not pending,
                   "mix": self.mix.fingerprint()})
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next ``__iter__`` continues after its last consumed step."""
        state_dict = dict(state_dict)
        if state_dict.pop("format", 1) != 2:
            raise ValueError("sampler state is from an older speech_ed (buffered cuts stored as lines); it cannot "
                             "continue its epoch exactly: start the epoch afresh (set_epoch)")
        strategy = state_dict.pop("strategy")
        if strategy != self.strategy:
            raise ValueError(f"state_dict is from strategy {strategy!r}, this sampler uses {self.strategy!r}")
        for key in ("world_size", "seed"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state_dict[key]} but this run has {getattr(self, key)}; "
                                 "an exact resume needs the same value (or start afresh: trainer.resume_from=null)")
        restored = {k: state_dict.pop(k) for k in ("position", "planner", "pending", "steps_done", "finished",
                                                   "mix")}
        if restored["mix"] is not None and restored["mix"] != self.mix.fingerprint():
            raise ValueError(f"sampler state is from corpora of sizes/counts {restored['mix']}, these are "
                             f"{self.mix.fingerprint()}; resume with the same inputs and weights")
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
        self._epoch_started = False
        self._untouched_epoch = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # open files and generators do not pickle; a copy starts a fresh epoch
        state.update(_source=None, _readers=None, _epoch_started=False, _untouched_epoch=None, _queue=deque(),
                     _recent=deque(maxlen=RECENT_STEPS), _held={})
        return state

    @property
    def remaining_duration(self) -> Optional[float]:
        return None

    @property
    def remaining_cuts(self) -> Optional[int]:
        return None

    @property
    def num_cuts(self) -> Optional[int]:
        return self.mix.cuts_per_epoch if self._sources is not None else None
