"""The bucketing core: turns a stream of (key, duration, tokens, bucket) items into synchronised steps.

It knows nothing about cuts: the sampler feeds it positions in the epoch's cut sequence, the padding
simulation feeds it indices into a lengths table, so the report measures exactly what training gets. Items are
four numbers (about 100 bytes), so the buffer can hold hundreds of thousands of them; the sampler keeps the
manifest line of a cut only on the rank the cut is assigned to.

One epoch, identical on every rank (every rank runs the planner on the same lengths, so every rank knows every
rank's batches without any communication):

1. Items stream in until ``buffer_size`` of them are buffered. Each item joins its bucket's queue for one
   rank, the shortest one (so a bucket's queues stay within one item of each other).
2. A bucket is *ready* when each of its ``world_size`` queues holds a full batch. Each step picks one ready
   bucket with a generator shared by all ranks (weighted by how many steps it holds; the lowest ready bucket
   when ``shortest_first``) and every rank draws its batch from its own queue of that bucket.
3. If the buffer is full and no bucket is ready, the buffer is too small for the batch sizes and world size
   (:func:`needed_buffer_size` says how large it must be): the fullest bucket gives a partial step, counted as
   ``forced_steps``. A sampler whose buffer is sized automatically never gets there.
4. When the stream ends, the leftovers become full batches that may mix neighbouring buckets
   (:mod:`speech_ed.sampling.tail`). ``drop_last=True`` drops them instead (counted).
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Union

from speech_ed.sampling.assignment import PROMOTED, STATUS_NAMES
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes
from speech_ed.sampling.state import pack_batches, pack_steps, unpack_batches, unpack_steps
from speech_ed.sampling.tail import plan_tail

Item = tuple  # (key: int, duration_s: float, tokens: int, bucket: int)
Policy = Union[DurationBudget, FixedBatchSizes]
AUTO_BUFFER_MIN = 50_000  # items; a larger window of the stream shuffles better and costs ~100 bytes an item
AUTO_BUFFER_MAX = 4_000_000  # ~0.5 GiB of items per rank


@dataclass
class Step:
    """One training step for all ranks: ``batches[r]`` is rank r's batch of items."""

    bucket: int
    """Bucket all batches were drawn from; -1 for end-of-epoch batches that may mix neighbouring buckets."""
    batches: list[list[Item]]


def needed_buffer_size(policy: Policy, upper_durations: list[float], world_size: int) -> int:
    """Items the buffer must hold for one bounded bucket to be ready whatever the mix (pigeonhole): with fewer,
    a full buffer can have no ready bucket and the planner must force a partial step."""
    return sum(world_size * policy.ready_size(b, u) for b, u in enumerate(upper_durations)
               if u != float("inf"))


def resolve_buffer_size(requested: Optional[int], needed: int, epoch_size: Optional[int] = None,
                        where: str = "buffer_size") -> int:
    """The buffer size to use: ``requested``, or (None) twice what is needed, at least
    :data:`AUTO_BUFFER_MIN`, at most the epoch and :data:`AUTO_BUFFER_MAX`. Warns, naming the size needed,
    when the buffer is too small for the batch sizes and world size (forced partial steps would follow)."""
    if requested is not None and requested < 1:
        raise ValueError(f"{where} must be >= 1 or null (automatic), got {requested}")
    size = requested if requested is not None else min(max(2 * needed, AUTO_BUFFER_MIN), AUTO_BUFFER_MAX)
    if epoch_size is not None:
        size = min(size, max(epoch_size, 1))
    covers_epoch = epoch_size is not None and size >= epoch_size
    if size < needed and not covers_epoch:
        warnings.warn(f"{where}={size} is below the {needed} cuts needed for every rank to draw a full batch "
                      f"from one bucket; batches will collapse into forced partial steps. Set {where} to at "
                      f"least {needed} (null sizes it automatically)", stacklevel=2)
    return int(size)


class EpochPlanner:
    """Plans the steps of one epoch over a stream of items.

    Args:
        policy: batch constraint (fixed per-bucket sizes or duration budget).
        upper_durations: duration bound of each bucket (inf where unbounded).
        world_size: number of data-parallel ranks that each get one batch per step.
        buffer_size: maximum number of items held in the buckets.
        shuffle: draw items at random inside a bucket (else first-in first-out).
        drop_last: drop the end-of-epoch leftovers instead of packing them.
        sort_tail: lay leftovers out by bucket before packing them (False: in random order, as the 'random'
            strategy does).
    """

    def __init__(self, policy: Policy, upper_durations: list[float], world_size: int = 1,
                 buffer_size: int = 20000, shuffle: bool = True, drop_last: bool = False, sort_tail: bool = True):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.policy = policy
        self.upper = [float(u) for u in upper_durations]
        self.num_buckets = len(self.upper)
        self.world_size = world_size
        self.buffer_size = buffer_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sort_tail = sort_tail
        distinct = sorted(set(self.upper))
        self._group_of = [distinct.index(u) for u in self.upper]
        self.stats: Counter = Counter()
        self.owner: Optional[int] = None  # the rank whose items are reported to on_own(key) as they arrive
        self.on_own = None
        self._tail: Optional[list[Step]] = None

    def min_buffer_size(self) -> int:
        """See :func:`needed_buffer_size`."""
        return needed_buffer_size(self.policy, self.upper, self.world_size)

    def plan(self, items: Iterable[tuple], rng: random.Random, shortest_first: bool = False) -> Iterator[Step]:
        """Yield the epoch's steps.

        Args:
            items: ``(key, duration_s, tokens, bucket, status)``; ``bucket < 0`` means dropped (counted under
                the status name).
            rng: generator shared by all ranks (bucket choice, in-bucket draws, tail layout).
            shortest_first: always draw from the lowest ready bucket (SortaGrad's first epoch).
        """
        self.start(rng, shortest_first)
        source = iter(items)
        while (step := self.next_step(source)) is not None:
            yield step

    def start(self, rng: random.Random, shortest_first: bool = False) -> None:
        """Begin an epoch: empty buckets, fresh counters; ``next_step`` then pulls items one at a time."""
        self.stats = Counter()
        self._rng, self._shortest_first = rng, shortest_first
        W, K = self.world_size, self.num_buckets
        self._queues: list[list[list[Item]]] = [[[] for _ in range(W)] for _ in range(K)]  # [bucket][rank]
        self._lens = [[0] * W for _ in range(K)]
        # Whose turn it is in each bucket: a round robin from a random rank each epoch, so a rank's share of a
        # bucket differs between epochs even when the manifest is read in the same order.
        self._turn = [rng.randrange(W) for _ in range(K)] if W > 1 else [0] * K
        self._longest = [0.0] * K
        self._need = [self.policy.ready_size(b, u) for b, u in enumerate(self.upper)]  # per rank
        self._unbounded = [u == float("inf") for u in self.upper]
        self._lo, self._at_lo = [0] * K, [W] * K  # shortest queue of each bucket, and how many have it
        self._ready: set[int] = set()
        self._buffered = 0
        self._exhausted = False
        self._tail = None  # end-of-epoch steps, planned once the stream has ended

    def _push(self, key, duration: float, tokens: int, b: int) -> None:
        lens = self._lens[b]
        r = 0
        if self.world_size > 1:  # the rank whose turn it is, or the first one with the shortest queue
            lo = self._lo[b]
            r = self._turn[b]
            if lens[r] != lo:
                r = lens.index(lo)
            self._turn[b] = r + 1 if r + 1 < self.world_size else 0
        self._queues[b][r].append((key, duration, tokens, b))
        lens[r] += 1
        self._buffered += 1
        if r == self.owner and self.on_own is not None:
            self.on_own(key)
        if self._unbounded[b] and duration > self._longest[b]:
            self._longest[b] = duration
            self._need[b] = self.policy.ready_size(b, duration)
        self._at_lo[b] -= 1
        if self._at_lo[b] == 0:  # every shortest queue grew: the minimum moved up
            self._refresh(b)
        elif self._unbounded[b] and self._lo[b] < self._need[b]:
            self._ready.discard(b)

    def _refresh(self, b: int) -> None:
        """Recompute bucket b's shortest queue length (and how many queues have it) and whether it is ready."""
        lens = self._lens[b]
        lo = min(lens)
        self._lo[b], self._at_lo[b] = lo, lens.count(lo)
        if lo >= self._need[b]:
            self._ready.add(b)
        else:
            self._ready.discard(b)

    def next_step(self, source: Iterator[tuple]) -> Optional[Step]:
        """The epoch's next step, pulling from ``source`` only as far as the buffer needs; None at the end.

        Everything the epoch depends on lives in attributes (not in a generator frame), so
        :meth:`state_dict` can capture it between any two steps.
        """
        if self._tail is not None:
            return self._next_tail_step()
        while self._buffered < self.buffer_size and not self._exhausted:
            self._take(source)
        if not self._ready and not self._exhausted and self._buffered:
            self._take(source)  # a full buffer: one more item tells whether the stream has in fact ended
        if self._ready:
            b = self._choose()
            return self._count(Step(b, self._draw_step(b)))
        if not self._exhausted and self._buffered:
            self.stats["forced_steps"] += 1
            return self._count(self._forced_step())
        self._tail = self._plan_tail()
        return self._next_tail_step()

    def _take(self, source: Iterator[tuple]) -> None:
        """Pull one item into the buffer (or count its drop); mark the stream exhausted at its end."""
        try:
            key, duration, tokens, b, status = next(source)
        except StopIteration:
            self._exhausted = True
            return
        stats = self.stats
        stats["cuts_seen"] += 1
        if b < 0:
            stats["dropped_" + STATUS_NAMES[status]] += 1
            return
        if status == PROMOTED:
            stats["promoted"] += 1
        self._push(key, duration, tokens, b)

    def _choose(self) -> int:
        if self._shortest_first:
            return min(self._ready)
        candidates = sorted(self._ready)
        weights = [self._lo[b] // self._need[b] for b in candidates]
        return self._rng.choices(candidates, weights=weights)[0]

    def _draw_step(self, b: int) -> list[list[Item]]:
        batches = [self._draw(self._queues[b][r], b) for r in range(self.world_size)]
        self._after_draw(b, batches)
        return batches

    def _after_draw(self, b: int, batches: list[list[Item]]) -> None:
        lens = self._lens[b]
        for r in range(self.world_size):
            lens[r] = len(self._queues[b][r])
        self._buffered -= sum(len(x) for x in batches)
        self._refresh(b)

    def _forced_step(self) -> Step:
        """A partial step from the fullest bucket; a rank whose queue of it is empty draws from its nearest
        non-empty bucket (or, with no cut buffered at all, gets a copy of another rank's cut, counted)."""
        K, W = self.num_buckets, self.world_size
        b = max(range(K), key=lambda i: (self._lo[i] / self._need[i], sum(self._lens[i]), -i))
        batches: list[list[Item]] = []
        for r in range(W):
            source = b
            if not self._queues[b][r]:
                near = sorted((abs(i - b), i) for i in range(K) if self._queues[i][r])
                source = near[0][1] if near else None
            batch = self._draw(self._queues[source][r], source) if source is not None else []
            if source is not None and source != b:
                self._after_draw(source, [batch])
            batches.append(batch)
        self._after_draw(b, [x for x, r in zip(batches, range(W)) if x and x[0][3] == b])
        for r in range(W):
            if not batches[r]:
                donor = next(x for x in batches if x)
                batches[r] = [donor[0]]
                self.stats["duplicated"] += 1
        return Step(b, batches)

    def _draw(self, items: list[Item], bucket: Optional[int]) -> list[Item]:
        """Take items from a queue until the next one would break the constraint."""
        batch: list[Item] = []
        max_d, max_t = 0.0, 0
        fits, rng, shuffle = self.policy.fits, self._rng, self.shuffle
        while items:
            j = rng.randrange(len(items)) if shuffle else 0
            item = items[j]
            d = item[1] if item[1] > max_d else max_d
            t = item[2] if item[2] > max_t else max_t
            if not fits(bucket, len(batch) + 1, d, t):
                break
            if shuffle:
                items[j] = items[-1]
                items.pop()
            else:
                items.pop(0)
            batch.append(item)
            max_d, max_t = d, t
        return batch

    def _plan_tail(self) -> list[Step]:
        leftovers = self._buffered
        queues = [[self._queues[b][r] for b in range(self.num_buckets)] for r in range(self.world_size)]
        self._queues = [[[] for _ in range(self.world_size)] for _ in range(self.num_buckets)]
        self._lens = [[0] * self.world_size for _ in range(self.num_buckets)]
        self._lo, self._at_lo = [0] * self.num_buckets, [self.world_size] * self.num_buckets
        self._ready.clear()
        self._buffered = 0
        if not leftovers:
            return []
        if self.drop_last:
            self.stats["dropped_drop_last"] += leftovers
            return []
        steps = plan_tail(queues, self.policy.capacity, self._group_of, self._rng, self.sort_tail,
                          self._shortest_first, self.stats)
        return [Step(-1, batches) for batches in steps]

    def _next_tail_step(self) -> Optional[Step]:
        if not self._tail:
            return None
        step = self._tail.pop(0)
        self.stats["tail_steps"] += 1
        return self._count(step)

    def _count(self, step: Step) -> Step:
        self.stats["steps"] += 1
        self.stats["batches"] += len(step.batches)
        self.stats["cuts_yielded"] += sum(len(b) for b in step.batches)
        return step

    @property
    def finished(self) -> bool:
        """The stream has ended and every step of the epoch has been handed out."""
        return self._tail is not None and not self._tail

    @property
    def buffered(self) -> int:
        return self._buffered

    def buffered_keys(self) -> Iterator[tuple[Any, int]]:
        """``(key, rank)`` of every item held (queues and planned tail)."""
        for b in range(self.num_buckets):
            for r in range(self.world_size):
                for it in self._queues[b][r]:
                    yield it[0], r
        for step in self._tail or ():
            for r, batch in enumerate(step.batches):
                for it in batch:
                    yield it[0], r

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`next_step` needs to continue the epoch: its size is bounded by ``buffer_size``
        items (as int64/float64 tensors, so a checkpoint stays compact), whatever the position."""
        version, internal, gauss = self._rng.getstate()
        queues = [self._queues[b][r] for b in range(self.num_buckets) for r in range(self.world_size)]
        return {"stats": dict(self.stats), "rng": [version, list(internal), gauss],
                "shortest_first": self._shortest_first, "queues": pack_batches(queues),
                "turn": list(self._turn), "longest": list(self._longest), "need": list(self._need),
                "exhausted": self._exhausted, "tail": None if self._tail is None else pack_steps(self._tail)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue an epoch captured by :meth:`state_dict`."""
        version, internal, gauss = state["rng"]
        self.start(random.Random(0), state["shortest_first"])
        self._rng.setstate((version, tuple(internal), gauss))  # after start(), which draws from its generator
        self.stats.update(state["stats"])
        queues = unpack_batches(state["queues"])
        if len(queues) != self.num_buckets * self.world_size:
            raise ValueError(f"sampler state has {len(queues)} bucket queues, these bins and world size need "
                             f"{self.num_buckets * self.world_size}; resume with the bucket_bins.yaml and "
                             "world size the run started with")
        W = self.world_size
        self._queues = [[queues[b * W + r] for r in range(W)] for b in range(self.num_buckets)]
        self._lens = [[len(q) for q in qs] for qs in self._queues]
        self._turn = list(state["turn"])
        self._longest, self._need = list(state["longest"]), list(state["need"])
        for b in range(self.num_buckets):
            self._refresh(b)
        self._buffered = sum(map(sum, self._lens))
        self._exhausted = state["exhausted"]
        if state["tail"] is not None:
            self._tail = unpack_steps(state["tail"])

    def summary(self) -> dict[str, Any]:
        """Counters of the last (or current) epoch, with every drop reason present."""
        out = {k: 0 for k in ("cuts_seen", "cuts_yielded", "steps", "batches", "promoted", "forced_steps",
                              "tail_steps", "duplicated")}
        out.update({"dropped_" + STATUS_NAMES[s]: 0 for s in (2, 3, 4, 5)})
        out["dropped_drop_last"] = 0
        out.update(self.stats)
        out["cuts_dropped"] = sum(v for k, v in out.items() if k.startswith("dropped_"))
        return out
