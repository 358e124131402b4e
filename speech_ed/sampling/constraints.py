"""How many cuts go into one batch: fixed per-bucket sizes (OOMptimizer output) or a padding-aware budget.

Both answer the same two questions for the planner:

* ``fits(bucket, n, max_duration, max_tokens)``: may a batch of ``n`` cuts with these longest lengths be
  formed? ``bucket`` is ``None`` for batches that mix buckets (end-of-epoch leftovers).
* ``capacity(max_duration, max_tokens)``: the most cuts a mixed batch with these longest lengths may hold.
* ``ready_size(bucket, longest)``: how many buffered cuts a bucket needs before it is worth drawing from.
"""

from __future__ import annotations

import math
from typing import Optional

from speech_ed.sampling.assignment import BucketAssigner


class DurationBudget:
    """Padding-aware budget: ``n x longest <= max_duration_s`` (a single over-long cut still forms a batch).

    Args:
        max_duration_s: seconds of padded audio per batch.
        quadratic_duration_s: if set, a cut of d seconds counts as ``d + d^2 / quadratic_duration_s``
            (attention cost grows with the square of length).
    """

    def __init__(self, max_duration_s: float, quadratic_duration_s: Optional[float] = None):
        if not max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {max_duration_s}")
        if quadratic_duration_s is not None and not quadratic_duration_s > 0:
            raise ValueError(f"quadratic_duration_s must be > 0 or None, got {quadratic_duration_s}")
        self.max_duration_s = float(max_duration_s)
        self.quadratic_duration_s = quadratic_duration_s

    def effective(self, duration: float) -> float:
        q = self.quadratic_duration_s
        return duration + duration * duration / q if q else duration

    def fits(self, bucket: Optional[int], n: int, max_duration: float, max_tokens: int) -> bool:
        return n <= 1 or n * self.effective(max_duration) <= self.max_duration_s

    def capacity(self, max_duration: float, max_tokens: int) -> int:
        """Most cuts a batch with these longest lengths may hold (at least 1)."""
        return max(1, int(self.max_duration_s // self.effective(max_duration)))

    def ready_size(self, bucket: int, longest: float) -> int:
        """One more cut than a batch of the bucket's longest cuts can hold, so a drawn batch fills up."""
        if not math.isfinite(longest) or longest <= 0:
            return 1
        return int(self.max_duration_s // self.effective(longest)) + 1

    def describe(self) -> dict:
        return {"max_duration_s": self.max_duration_s, "quadratic_duration_s": self.quadratic_duration_s}


class FixedBatchSizes:
    """Exactly ``batch_sizes[b]`` cuts per batch of bucket ``b``.

    A batch that mixes buckets gets the size of its *envelope*: the first bucket whose bounds hold the batch's
    longest duration and largest token count, since that bucket's size was measured on a worst case at least
    as large.

    Args:
        batch_sizes: one positive size per bucket.
        assigner: the bucket assigner of the same bins (for envelopes).
    """

    def __init__(self, batch_sizes: list[int], assigner: BucketAssigner):
        if len(batch_sizes) != assigner.num_buckets:
            raise ValueError(f"{len(batch_sizes)} batch sizes for {assigner.num_buckets} buckets; bucket "
                             "batch sizes must come from the same bucket_bins (re-run the OOMptimizer)")
        if any(int(b) < 1 for b in batch_sizes):
            raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.assigner = assigner

    def effective(self, duration: float) -> float:
        return duration

    def fits(self, bucket: Optional[int], n: int, max_duration: float, max_tokens: int) -> bool:
        if n <= 1:
            return True
        if bucket is None:
            bucket = self.assigner.envelope(max_duration, max_tokens)
            if bucket is None:
                return False
        return n <= self.batch_sizes[bucket]

    def capacity(self, max_duration: float, max_tokens: int) -> int:
        """Size of the envelope bucket of (max_duration, max_tokens); 1 if no bucket holds them."""
        bucket = self.assigner.envelope(max_duration, max_tokens)
        return 1 if bucket is None else self.batch_sizes[bucket]

    def ready_size(self, bucket: int, longest: float) -> int:
        return self.batch_sizes[bucket]

    def describe(self) -> dict:
        return {"batch_sizes": list(self.batch_sizes)}
