"""Which bucket a cut belongs to, given its (duration, decoder tokens); and why a cut fits none.

Strict 2D assignment (the NeMo rule): the smallest duration group whose bound is >= the duration, then the
smallest token sub-bucket of *that group* whose bound is >= the tokens. A cut whose tokens exceed the group's
largest sub-bucket, or whose tokens-per-second exceeds the bucket's ``max_tps``, is dropped. Lenient mode
instead promotes such a cut to the first later bucket where both dimensions fit (ignoring TPS): no data is
lost, at the price of padding. A cut longer than the last duration bound is dropped in both modes.

Every decision is returned as a status code so callers can count drops by reason.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Optional

import numpy as np

from speech_ed.sampling.bins import BucketBins

OK, PROMOTED, TOO_LONG, TOO_MANY_TOKENS, TPS_OUTLIER, FILTERED = 0, 1, 2, 3, 4, 5
STATUS_NAMES = {OK: "ok", PROMOTED: "promoted", TOO_LONG: "too_long", TOO_MANY_TOKENS: "too_many_tokens",
                TPS_OUTLIER: "tps_outlier", FILTERED: "filtered"}  # FILTERED: rejected by sampler.filter()
DROP_STATUSES = (TOO_LONG, TOO_MANY_TOKENS, TPS_OUTLIER)


class BucketAssigner:
    """Map (duration, tokens) to a bucket index.

    Args:
        bins: 1D or 2D bins; ``None`` puts every cut in bucket 0 (the 'random' strategy).
        strict: 2D only: drop token / TPS misfits (True) or promote them to a later bucket (False).
    """

    def __init__(self, bins: Optional[BucketBins], strict: bool = True):
        self.bins = bins
        self.strict = strict
        if bins is None:
            self.num_buckets = 1
            return
        self.num_buckets = bins.num_buckets
        groups = bins.duration_groups()
        self._group_bounds = [g[0] for g in groups]
        self._group_start = [g[1] for g in groups]
        self._group_tokens = [bins.tokens[s:e] if bins.is_2d else None for _, s, e in groups]
        self._max_tps = bins.max_tps

    def upper_duration(self, bucket: int) -> float:
        """Duration bound of ``bucket`` (inf without bins)."""
        return float("inf") if self.bins is None else self.bins.durations[bucket]

    def lower_duration(self, bucket: int) -> float:
        """Largest duration bound below ``bucket``'s group (0 for the first group or without bins)."""
        if self.bins is None:
            return 0.0
        g = bisect_left(self._group_bounds, self.bins.durations[bucket])
        return self._group_bounds[g - 1] if g > 0 else 0.0

    def assign(self, duration: float, tokens: int) -> tuple[int, int]:
        """Bucket and status of one cut; bucket is -1 when the status is a drop."""
        if self.bins is None:
            return 0, OK
        g = bisect_left(self._group_bounds, duration)
        if g == len(self._group_bounds):
            return -1, TOO_LONG
        group_tokens = self._group_tokens[g]
        if group_tokens is None:
            return g, OK
        j = bisect_left(group_tokens, tokens)
        if j < len(group_tokens):
            b = self._group_start[g] + j
            if self._max_tps is None or tokens <= self._max_tps[b] * duration:
                return b, OK
            status = TPS_OUTLIER
        else:
            status = TOO_MANY_TOKENS
        if self.strict:
            return -1, status
        b = self.envelope(duration, tokens, first_group=g)
        return (b, PROMOTED) if b is not None else (-1, status)

    def envelope(self, duration: float, tokens: int, first_group: int = 0) -> Optional[int]:
        """First bucket whose bounds hold both ``duration`` and ``tokens`` (ignores TPS), else None."""
        if self.bins is None:
            return 0
        for g in range(first_group, len(self._group_bounds)):
            if self._group_bounds[g] < duration:
                continue
            group_tokens = self._group_tokens[g]
            if group_tokens is None:
                return g
            j = bisect_left(group_tokens, tokens)
            if j < len(group_tokens):
                return self._group_start[g] + j
        return None

    def assign_many(self, durations: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`assign`.

        Args:
            durations: (N,) seconds.
            tokens: (N,) decoder tokens.

        Returns:
            ``(buckets, statuses)``, both (N,) int64; buckets are -1 where the status is a drop.
        """
        durations = np.asarray(durations, dtype=np.float64)
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(durations)
        if self.bins is None:
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        bounds = np.asarray(self._group_bounds)
        g = np.searchsorted(bounds, durations, side="left")
        status = np.where(g == len(bounds), TOO_LONG, OK).astype(np.int64)
        if not self.bins.is_2d:
            return np.where(status == OK, g, -1).astype(np.int64), status
        width = max(len(t) for t in self._group_tokens)
        padded = np.full((len(bounds) + 1, width), np.iinfo(np.int64).max, dtype=np.int64)
        count = np.zeros(len(bounds) + 1, dtype=np.int64)
        for k, t in enumerate(self._group_tokens):
            padded[k, : len(t)] = t
            count[k] = len(t)
        j = np.sum(tokens[:, None] > padded[g], axis=1)  # (N,) smallest sub-bucket with bound >= tokens
        fits = (status == OK) & (j < count[g])
        status[(status == OK) & ~fits] = TOO_MANY_TOKENS
        start = np.append(np.asarray(self._group_start), 0)
        bucket = np.where(fits, start[g] + np.minimum(j, width - 1), -1)
        if self._max_tps is not None:
            cap = np.asarray(self._max_tps)[np.maximum(bucket, 0)]
            outlier = fits & (tokens > cap * durations)
            status[outlier] = TPS_OUTLIER
            bucket[outlier] = -1
        if not self.strict:  # few cuts: promote them one by one
            for i in np.flatnonzero((status == TOO_MANY_TOKENS) | (status == TPS_OUTLIER)):
                b = self.envelope(float(durations[i]), int(tokens[i]), first_group=int(g[i]))
                if b is not None:
                    bucket[i], status[i] = b, PROMOTED
        return bucket.astype(np.int64), status


def count_statuses(statuses: np.ndarray) -> dict[str, int]:
    """``{status name: count}`` for every non-zero status (drops and promotions)."""
    values, counts = np.unique(np.asarray(statuses), return_counts=True)
    return {STATUS_NAMES[int(v)]: int(c) for v, c in zip(values, counts) if int(v) != OK}
