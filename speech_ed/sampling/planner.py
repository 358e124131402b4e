"""The bucketing core: turns a stream of (key, duration, tokens, bucket) items into synchronised steps.

It knows nothing about cuts: the sampler feeds it cuts as keys, the padding simulation feeds it integer
indices, so the report measures exactly what training gets.

One epoch:

1. Items stream in until ``buffer_size`` of them are buffered (memory stays bounded for any manifest size).
2. A bucket is *ready* when it holds enough items for ``world_size`` full batches. Each step picks one ready
   bucket with a generator shared by all ranks (weighted by how many batches it holds; shortest bucket first
   when ``shortest_first``) and draws ``world_size`` batches from it, one per rank. Every rank runs the same
   planner on the same stream, so all ranks draw from the same bucket at every step.
3. If the buffer is full and no bucket is ready (buffer too small for the number of buckets), the fullest
   bucket gives a partial step; these are counted as ``forced_steps``.
4. When the stream ends, the leftovers of all buckets (under one batch per bucket) are sorted by duration
   group and tokens and split into batches by an exact minimum-padding programme under the same constraint:
   a few batches mixing neighbouring buckets instead of one partial batch per bucket (150 buckets would
   otherwise add 150 small batches per epoch). These tail batches are grouped by ``world_size`` neighbours; a
   last group smaller than ``world_size`` is split so that every rank gets a batch (a cut is duplicated, and
   counted, only when there are fewer cuts than ranks). ``drop_last=True`` drops all leftovers instead
   (counted), so every yielded batch is a full one.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from speech_ed.sampling.assignment import PROMOTED, STATUS_NAMES
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes

Item = tuple  # (key, duration_s, tokens, bucket)
Policy = Union[DurationBudget, FixedBatchSizes]


@dataclass
class Step:
    """One training step for all ranks: ``batches[r]`` is rank r's batch of items."""

    bucket: int
    """Bucket all batches were drawn from; -1 for end-of-epoch batches that mix buckets."""
    batches: list[list[Item]]


class EpochPlanner:
    """Plans the steps of one epoch over a stream of items.

    Args:
        policy: batch constraint (fixed per-bucket sizes or duration budget).
        upper_durations: duration bound of each bucket (inf where unbounded).
        world_size: number of data-parallel ranks that each get one batch per step.
        buffer_size: maximum number of items held in the buckets.
        shuffle: draw items at random inside a bucket (else first-in first-out).
        drop_last: drop the end-of-epoch leftovers instead of packing them.
        sort_tail: sort leftovers by (duration group, tokens) and pack them with the least padding (False:
            pack them greedily in random order, as the 'random' strategy does).
        batch_cost: tail packing: padding (in cuts' worth) that one extra batch must save to be made.
    """

    def __init__(self, policy: Policy, upper_durations: list[float], world_size: int = 1,
                 buffer_size: int = 20000, shuffle: bool = True, drop_last: bool = False,
                 sort_tail: bool = True, batch_cost: float = 4.0):
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
        self.batch_cost = batch_cost
        distinct = sorted(set(self.upper))
        self._group_of = [distinct.index(u) for u in self.upper]
        self.stats: Counter = Counter()
        self._tail: Optional[list[Step]] = None

    def min_buffer_size(self) -> int:
        """Items needed to make every bounded bucket ready at once (a smaller buffer forces partial steps)."""
        return sum(self.world_size * self.policy.ready_size(b, u) for b, u in enumerate(self.upper)
                   if u != float("inf"))

    def plan(self, items: Iterable[tuple], rng: random.Random, shortest_first: bool = False,
             ) -> Iterator[Step]:
        """Yield the epoch's steps.

        Args:
            items: ``(key, duration_s, tokens, bucket, status)``; ``bucket < 0`` means dropped (counted under
                the status name).
            rng: generator shared by all ranks (bucket choice and in-bucket draws).
            shortest_first: always draw from the lowest ready bucket (sortagrad's first epoch).
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
        self._buckets: list[list[Item]] = [[] for _ in range(K)]
        self._longest = [0.0] * K
        self._need = [W * self.policy.ready_size(b, u) for b, u in enumerate(self.upper)]
        self._ready: set[int] = set()
        self._buffered = 0
        self._exhausted = False
        self._tail: Optional[list[Step]] = None  # end-of-epoch steps, planned once the stream has ended

    def next_step(self, source: Iterator[tuple]) -> Optional[Step]:
        """The epoch's next step, pulling from ``source`` only as far as the buffer needs; None at the end.

        Everything the epoch depends on lives in attributes (not in a generator frame), so
        :meth:`state_dict` can capture it between any two steps.
        """
        if self._tail is not None:
            return self._next_tail_step()
        stats, W, K = self.stats, self.world_size, self.num_buckets
        buckets, longest, need, ready = self._buckets, self._longest, self._need, self._ready
        unbounded = [u == float("inf") for u in self.upper]
        while self._buffered < self.buffer_size and not self._exhausted:
            try:
                key, duration, tokens, b, status = next(source)
            except StopIteration:
                self._exhausted = True
                break
            stats["cuts_seen"] += 1
            if b < 0:
                stats["dropped_" + STATUS_NAMES[status]] += 1
                continue
            if status == PROMOTED:
                stats["promoted"] += 1
            buckets[b].append((key, duration, tokens, b))
            self._buffered += 1
            if unbounded[b] and duration > longest[b]:
                longest[b] = duration
                need[b] = W * self.policy.ready_size(b, duration)
                if len(buckets[b]) < need[b]:
                    ready.discard(b)
            if len(buckets[b]) >= need[b]:
                ready.add(b)
        rng = self._rng
        if ready:
            b = self._choose(ready, buckets, need, rng, self._shortest_first)
            batches = [self._draw(buckets[b], b, rng) for _ in range(W)]
            self._buffered -= sum(len(x) for x in batches)
        elif not self._exhausted and self._buffered:
            b = max(range(K), key=lambda i: (len(buckets[i]) / need[i], -i))
            batches = [self._draw(buckets[b], b, rng) for _ in range(W)]
            self._buffered -= sum(len(x) for x in batches)
            batches = self._split_to_world(batches)
            stats["forced_steps"] += 1
        else:
            leftovers = [it for bucket in buckets for it in bucket]
            for bucket in buckets:
                bucket.clear()
            self._buffered = 0
            self._tail = self._plan_tail(leftovers, rng, self._shortest_first)
            return self._next_tail_step()
        if len(buckets[b]) < need[b]:
            ready.discard(b)
        return self._count(Step(b, batches))

    @property
    def finished(self) -> bool:
        """The stream has ended and every step of the epoch has been handed out."""
        return self._tail is not None and not self._tail

    def state_dict(self, encode: Callable[[Any], Any] = lambda key: key) -> dict[str, Any]:
        """Everything :meth:`next_step` needs to continue the epoch, with keys passed through ``encode``.

        Its size is bounded by ``buffer_size`` items (plus the planned tail), whatever the position.
        """
        def items(seq):
            return [[encode(it[0]), it[1], it[2], it[3]] for it in seq]

        version, internal, gauss = self._rng.getstate()
        return {"stats": dict(self.stats), "rng": [version, list(internal), gauss],
                "shortest_first": self._shortest_first, "buckets": [items(b) for b in self._buckets],
                "longest": list(self._longest), "need": list(self._need), "ready": sorted(self._ready),
                "exhausted": self._exhausted,
                "tail": None if self._tail is None else [[s.bucket, [items(b) for b in s.batches]]
                                                         for s in self._tail]}

    def load_state_dict(self, state: dict[str, Any], decode: Callable[[Any], Any] = lambda key: key) -> None:
        """Continue an epoch captured by :meth:`state_dict` (``decode`` inverts its ``encode``)."""
        def items(seq):
            return [(decode(k), d, t, b) for k, d, t, b in seq]

        version, internal, gauss = state["rng"]
        rng = random.Random()
        rng.setstate((version, tuple(internal), gauss))
        self.start(rng, state["shortest_first"])
        self.stats.update(state["stats"])
        self._buckets = [items(b) for b in state["buckets"]]
        if len(self._buckets) != self.num_buckets:
            raise ValueError(f"sampler state has {len(self._buckets)} buckets, the bins have {self.num_buckets}; "
                             "resume with the bucket_bins.yaml the run started with")
        self._longest, self._need = list(state["longest"]), list(state["need"])
        self._ready = set(state["ready"])
        self._buffered = sum(len(b) for b in self._buckets)
        self._exhausted = state["exhausted"]
        if state["tail"] is not None:
            self._tail = [Step(b, [items(x) for x in batches]) for b, batches in state["tail"]]

    def _choose(self, ready: set[int], buckets, need, rng: random.Random, shortest_first: bool) -> int:
        if shortest_first:
            return min(ready)
        candidates = sorted(ready)
        weights = [len(buckets[b]) // need[b] for b in candidates]
        return rng.choices(candidates, weights=weights)[0]

    def _draw(self, items: list[Item], bucket: Optional[int], rng: random.Random) -> list[Item]:
        """Take items from a bucket until the next one would break the constraint."""
        batch: list[Item] = []
        max_d, max_t = 0.0, 0
        fits = self.policy.fits
        while items:
            j = rng.randrange(len(items)) if self.shuffle else 0
            item = items[j]
            d = item[1] if item[1] > max_d else max_d
            t = item[2] if item[2] > max_t else max_t
            if not fits(bucket, len(batch) + 1, d, t):
                break
            if self.shuffle:
                items[j] = items[-1]
                items.pop()
            else:
                items.pop(0)
            batch.append(item)
            max_d, max_t = d, t
        return batch

    def _split_to_world(self, batches: list[list[Item]]) -> list[list[Item]]:
        """Exactly ``world_size`` non-empty batches: split the largest in halves (a subset of a valid batch is
        valid), duplicating a cut only when there are fewer cuts than ranks."""
        batches = [b for b in batches if b]
        if not batches:
            raise RuntimeError("internal error: no items to split across ranks")
        while len(batches) < self.world_size:
            i = max(range(len(batches)), key=lambda k: len(batches[k]))
            big = batches[i]
            if len(big) >= 2:
                big = sorted(big, key=lambda it: (it[1], it[2]))
                half = len(big) // 2
                batches[i:i + 1] = [big[:half], big[half:]]
            else:
                batches.append([big[0]])
                self.stats["duplicated"] += 1
        return batches

    def _plan_tail(self, leftovers: list[Item], rng: random.Random, shortest_first: bool) -> list[Step]:
        if not leftovers:
            return []
        if self.drop_last:
            self.stats["dropped_drop_last"] += len(leftovers)
            return []
        if self.sort_tail:
            # Snake order: tokens rise in one duration group and fall in the next, so neighbours across a
            # group boundary have similar token counts too.
            group = self._group_of
            leftovers.sort(key=lambda it: (group[it[3]], it[2] if group[it[3]] % 2 == 0 else -it[2], it[1]))
            packed = self._pack_min_padding(leftovers)
        else:
            rng.shuffle(leftovers)
            packed = self._pack_greedy(leftovers)
        W = self.world_size
        groups = [packed[i:i + W] for i in range(0, len(packed), W)]
        if not shortest_first:
            rng.shuffle(groups)
        return [Step(-1, group) for group in groups]

    def _next_tail_step(self) -> Optional[Step]:
        if not self._tail:
            return None
        step = self._tail.pop(0)
        if len(step.batches) != self.world_size:
            step = Step(-1, self._split_to_world(step.batches))
        self.stats["tail_steps"] += 1
        return self._count(step)

    def _pack_greedy(self, seq: list[Item]) -> list[list[Item]]:
        packed: list[list[Item]] = []
        batch: list[Item] = []
        max_d, max_t = 0.0, 0
        for item in seq:
            d, t = max(max_d, item[1]), max(max_t, item[2])
            if batch and len(batch) + 1 > self.policy.capacity(d, t):
                packed.append(batch)
                batch, d, t = [], item[1], item[2]
            batch.append(item)
            max_d, max_t = d, t
        packed.append(batch)
        return packed

    def _pack_min_padding(self, seq: list[Item]) -> list[list[Item]]:
        """Split an ordered sequence into contiguous batches minimising padding + ``batch_cost`` per batch.

        Exact dynamic programme over cut points: O(len(seq) x largest batch). Padding is measured in cut
        equivalents (padded seconds / mean duration + padded tokens / mean tokens), so ``batch_cost`` says how
        many cuts' worth of padding one more batch is worth.
        """
        n = len(seq)
        mean_d = sum(it[1] for it in seq) / n
        mean_t = max(sum(it[2] for it in seq) / n, 1.0)
        capacity = self.policy.capacity
        inf = float("inf")
        best = [0.0] + [inf] * n
        start = [0] * (n + 1)
        for j in range(1, n + 1):
            max_d, max_t, sum_d, sum_t, cap = 0.0, 0, 0.0, 0, 0
            for i in range(j - 1, -1, -1):  # batch = seq[i:j]
                d, t = seq[i][1], seq[i][2]
                if d > max_d or t > max_t or not cap:
                    max_d, max_t = max(max_d, d), max(max_t, t)
                    cap = capacity(max_d, max_t)
                sum_d += d
                sum_t += t
                count = j - i
                if count > cap:
                    break
                cost = (best[i] + self.batch_cost + (count * max_d - sum_d) / mean_d
                        + (count * max_t - sum_t) / mean_t)
                if cost < best[j]:
                    best[j], start[j] = cost, i
        packed, j = [], n
        while j > 0:
            packed.append(seq[start[j]:j])
            j = start[j]
        return packed[::-1]

    def _count(self, step: Step) -> Step:
        self.stats["steps"] += 1
        self.stats["batches"] += len(step.batches)
        self.stats["cuts_yielded"] += sum(len(b) for b in step.batches)
        return step

    def summary(self) -> dict[str, Any]:
        """Counters of the last (or current) epoch, with every drop reason present."""
        out = {k: 0 for k in ("cuts_seen", "cuts_yielded", "steps", "batches", "promoted", "forced_steps",
                              "tail_steps", "duplicated")}
        out.update({"dropped_" + STATUS_NAMES[s]: 0 for s in (2, 3, 4, 5)})
        out["dropped_drop_last"] = 0
        out.update(self.stats)
        out["cuts_dropped"] = sum(v for k, v in out.items() if k.startswith("dropped_"))
        return out
