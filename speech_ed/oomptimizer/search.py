"""The OOMptimizer's search: the largest batch size that still fits, found with as few trials as possible.

Pure logic, no torch: a *fits oracle* ``fits(batch_size) -> bool`` runs one trial (on a GPU, a CPU or a
simulation) and the search decides which size to try next.

One bucket (:func:`find_max_batch_size`):

1. From ``start``, double after every success until the first failure; or, if ``start`` already fails, halve
   until the first success (a bucket where even one example fails gets 0).
2. Bisect between the largest success and the smallest failure until their gap is at most ``rel_gap`` of the
   failure (or 1). The answer is the largest success, a size that was actually observed to fit.

The bisection keeps ``largest success < smallest failure`` even when the oracle is noisy (a size that failed
once may succeed later, or the other way round), so it always ends, and it never returns a size it has not
seen succeed.

All buckets (:func:`search_buckets`): from the largest bucket to the smallest, each starting from twice the
previous bucket's answer (a smaller bucket fits at least as many examples, so this start is close).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence


@dataclass
class Trial:
    """One call of the fits oracle."""

    batch_size: int
    fits: bool


@dataclass
class SearchResult:
    """Outcome of one bucket's search.

    Attributes:
        batch_size: largest size observed to fit (0 when not even 1 fits).
        smallest_failure: smallest size observed to fail (None when the search hit ``max_batch_size``).
        trials: every trial in the order run.
        capped: True when ``max_batch_size`` fit, so the true maximum may be larger.
    """

    batch_size: int
    smallest_failure: Optional[int]
    trials: list[Trial] = field(default_factory=list)
    capped: bool = False

    @property
    def num_trials(self) -> int:
        return len(self.trials)


def find_max_batch_size(fits: Callable[[int], bool], start: int = 32, rel_gap: float = 0.05,
                        max_batch_size: int = 1 << 16) -> SearchResult:
    """Largest batch size for which ``fits`` returns True.

    Args:
        fits: oracle; runs one trial at the given batch size (>= 1).
        start: first size tried (clamped to [1, max_batch_size]).
        rel_gap: stop when ``(smallest_failure - largest_success) / smallest_failure <= rel_gap``.
        max_batch_size: never try above this; if it fits, return it with ``capped=True``.

    Returns:
        A :class:`SearchResult`; ``batch_size`` is always a size whose trial succeeded (or 0).

    Raises:
        ValueError: on a non-positive ``start``/``max_batch_size`` or ``rel_gap`` outside [0, 1).
    """
    if start < 1 or max_batch_size < 1:
        raise ValueError(f"start ({start}) and max_batch_size ({max_batch_size}) must be >= 1")
    if not 0.0 <= rel_gap < 1.0:
        raise ValueError(f"rel_gap must be in [0, 1), got {rel_gap}")
    trials: list[Trial] = []

    def run(bs: int) -> bool:
        ok = bool(fits(bs))
        trials.append(Trial(bs, ok))
        return ok

    bs = min(start, max_batch_size)
    lo, hi = 0, None  # largest success, smallest failure
    if run(bs):
        lo = bs
        while hi is None:
            if lo >= max_batch_size:
                return SearchResult(lo, None, trials, capped=True)
            bs = min(2 * lo, max_batch_size)
            if run(bs):
                lo = bs
            else:
                hi = bs
    else:
        hi = bs
        while lo == 0:
            if hi == 1:
                return SearchResult(0, 1, trials)
            bs = max(hi // 2, 1)
            if run(bs):
                lo = bs
            else:
                hi = bs
    while hi - lo > 1 and (hi - lo) / hi > rel_gap:
        mid = (lo + hi) // 2  # lo < mid < hi, so the invariant lo < hi survives any answer
        if run(mid):
            lo = mid
        else:
            hi = mid
    return SearchResult(lo, hi, trials)


def search_order(bins: Sequence[tuple[float, int]]) -> list[int]:
    """Bucket indices from the largest (longest, then most tokens) to the smallest."""
    return sorted(range(len(bins)), key=lambda i: (bins[i][0], bins[i][1]), reverse=True)


def search_buckets(bins: Sequence[tuple[float, int]], fits: Callable[[int, int], bool], start: int = 32,
                   rel_gap: float = 0.05, max_batch_size: int = 1 << 16,
                   on_result: Optional[Callable[[int, SearchResult], None]] = None) -> list[SearchResult]:
    """Search every bucket, largest first, each starting from twice the previous answer.

    Args:
        bins: ``(max_duration_s, max_tokens)`` upper bounds, one per bucket (any order).
        fits: oracle ``fits(bucket_index, batch_size) -> bool``.
        start: first size tried on the largest bucket.
        rel_gap: see :func:`find_max_batch_size`.
        max_batch_size: upper limit on any size tried.
        on_result: called as ``on_result(bucket_index, result)`` after each bucket (progress printing).

    Returns:
        One :class:`SearchResult` per bucket, in the order of ``bins``.
    """
    results: dict[int, SearchResult] = {}
    next_start = start
    for b in search_order(bins):
        res = find_max_batch_size(lambda bs, b=b: fits(b, bs), next_start, rel_gap, max_batch_size)
        results[b] = res
        if on_result is not None:
            on_result(b, res)
        next_start = max(2 * res.batch_size, 1)
    return [results[b] for b in range(len(bins))]
