"""End-of-epoch packing: the cuts left in the buckets when the stream ends, as full batches for every rank.

Every rank can only train on its own leftovers (the planner assigns each cut to a rank as it enters the
buffer, and only that rank holds its manifest line). With many ranks this is most of an epoch, not a few
batches: a step takes ``world_size x batch_size`` cuts of one bucket, and with 150 buckets and 16 ranks many
buckets never hold that many. So packing must be linear, keep batches full, and keep the ranks' batches of a
step alike (the slowest rank sets the step time):

1. All ranks' leftovers are put in one order: bucket by bucket (duration groups in order, the token
   sub-buckets of a group ascending in even groups and descending in odd ones, a snake, so neighbours across a
   group boundary have similar token counts), by token count inside a bucket in the same direction, ties in
   random order (batches differ between epochs).
2. The order is walked once; each rank collects its own cuts into its batch of the current step. When a
   rank's next cut would break its batch's constraint (the batch's longest cut and largest token count, a
   batch spanning buckets getting its *envelope* bucket's size), the step is closed for every rank. Since every
   bucket's cuts are spread evenly over the ranks, all batches of a step cover the same stretch of the order
   and hold about as many cuts.
   A rank that is full carries its next cuts over to the next step while the others fill up (so every batch
   of a step is full, not only the first one to fill), unless a whole batch is waiting.
3. A rank left without a cut in a step (only when fewer cuts than ranks remain) gets a copy of another rank's
   cut of that step (counted as ``duplicated``).
"""

from __future__ import annotations

import random
from typing import Callable, Optional

Item = tuple  # (key, duration_s, tokens, bucket)


def bucket_order(num_buckets: int, group_of: list[int]) -> list[int]:
    """Bucket indices in snake order: groups ascending, sub-buckets alternating direction per group."""
    groups: dict[int, list[int]] = {}
    for b in range(num_buckets):
        groups.setdefault(group_of[b], []).append(b)
    order: list[int] = []
    for g in sorted(groups):
        order.extend(groups[g] if g % 2 == 0 else groups[g][::-1])
    return order


def plan_tail(queues_by_rank: list[list[list[Item]]], capacity: Callable[[float, int], int],
              group_of: list[int], rng: random.Random, sort: bool, shortest_first: bool,
              stats) -> list[list[list[Item]]]:
    """The end-of-epoch steps: ``steps[j][r]`` is rank r's batch at tail step j.

    Args:
        queues_by_rank: ``queues_by_rank[r][b]``: rank r's leftover items of bucket b.
        capacity: most cuts a (possibly mixed) batch with these longest lengths may hold.
        group_of: duration group of each bucket.
        rng: the planner's generator (shared by all ranks).
        sort: lay leftovers out by bucket (False: all in random order, for the 'random' strategy).
        shortest_first: keep the steps in bucket order (SortaGrad) instead of shuffling them.
        stats: counter for ``duplicated``.
    """
    W = len(queues_by_rank)
    where = {b: i for i, b in enumerate(bucket_order(len(group_of), group_of))}
    if sort:  # bucket order, then tokens (rising in even groups, falling in odd ones), then at random
        sign = [1 if group_of[b] % 2 == 0 else -1 for b in range(len(group_of))]
        tagged = [(where[b], sign[b] * it[2], rng.random(), r, it)
                  for r, queues in enumerate(queues_by_rank) for b, q in enumerate(queues) for it in q]
    else:
        tagged = [(0, 0, rng.random(), r, it) for r, queues in enumerate(queues_by_rank) for q in queues for it in q]
    if not tagged:
        return []
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    steps: list[list[list[Item]]] = []
    current = [_Batch(capacity) for _ in range(W)]
    carry = [_Batch(capacity) for _ in range(W)]  # a full rank's next cuts, while the others fill up
    full = 0
    for _, _, _, r, item in tagged:
        if not current[r].full:
            if current[r].fits(item):
                current[r].add(item)
                continue
            current[r].full = True
            full += 1
        if not carry[r].fits(item):  # a whole batch waits while another rank is still open: close the step
            steps.append([b.items for b in current])
            current, carry, full = carry, [_Batch(capacity) for _ in range(W)], 0
            current[r].full, full = True, 1
        carry[r].add(item)
        if full == W:
            steps.append([b.items for b in current])
            current, carry, full = carry, [_Batch(capacity) for _ in range(W)], 0
    last = [b.items for b in current]
    if any(c.items for c in carry):  # the walk ended with cuts waiting: one more step, which ranks without
        waiting = [c.items for c in carry]  # waiting cuts fill with the second half of their last batch
        for r in range(W):
            if not waiting[r] and len(last[r]) >= 2:
                half = len(last[r]) // 2
                last[r], waiting[r] = last[r][:half], last[r][half:]
        steps += [last, waiting]
    else:
        steps.append(last)
    for step in steps:
        for r in range(W):
            if not step[r]:  # fewer cuts than ranks in this step: copy one
                donor = max(step, key=len)
                step[r] = [donor[0]]
                stats["duplicated"] += 1
    if not shortest_first:
        rng.shuffle(steps)
    return steps


class _Batch:
    """A batch being filled: its cuts, longest duration, most tokens and the capacity those allow."""

    __slots__ = ("capacity", "items", "max_d", "max_t", "cap", "full")

    def __init__(self, capacity: Callable[[float, int], int]):
        self.capacity, self.items, self.max_d, self.max_t, self.cap, self.full = capacity, [], 0.0, 0, 0, False

    def fits(self, item: Item) -> bool:
        if not self.items:
            return True
        d, t = item[1], item[2]
        if d > self.max_d or t > self.max_t:
            return len(self.items) + 1 <= self.capacity(max(d, self.max_d), max(t, self.max_t))
        return len(self.items) + 1 <= self.cap

    def add(self, item: Item) -> None:
        d, t = item[1], item[2]
        if not self.items or d > self.max_d or t > self.max_t:
            self.max_d, self.max_t = max(d, self.max_d), max(t, self.max_t)
            self.cap = self.capacity(self.max_d, self.max_t)
        self.items.append(item)


def mixed_bucket(batches: list[list[Item]]) -> Optional[int]:
    """The bucket shared by every item of a step, or None when the step mixes buckets."""
    buckets = {it[3] for b in batches for it in b}
    return buckets.pop() if len(buckets) == 1 else None
