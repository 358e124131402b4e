"""Bucket bins: 1D (duration) and 2D (duration, decoder tokens) upper bounds, and how to estimate them.

A bucket is described by its upper bounds. 1D: bucket ``i`` holds cuts with
``durations[i-1] < d <= durations[i]``. 2D: buckets are sorted by ``(duration, tokens)``; buckets sharing a
duration bound form a *duration group*, and inside a group bucket ``j`` holds cuts with
``tokens[j-1] < u <= tokens[j]``.

Two estimators:

* ``"equal"`` -- the known method (lhotse ``estimate_duration_buckets``, NeMo
  ``estimate_duration_bins_2d``): duration groups of equal total audio; in each group, tokens-per-second (TPS)
  outliers above mean + k sigma are excluded and the group's max TPS is capped at the largest remaining TPS;
  token sub-buckets of equal total tokens; duplicate bounds merged.
* ``"dp"`` -- padding-minimising: an exact dynamic programme per dimension that picks the bounds minimising
  the padding to the bucket's upper bound, sum over cuts of ``(bound - length)``. Durations are first rounded
  up to a grid (10 ms by default) so the programme's size does not grow with the number of cuts.

Both use the same TPS rule, so they differ only in where the bounds fall.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, field
from typing import Optional

import numpy as np

ESTIMATION_METHODS = ("equal", "dp")


@dataclass
class BucketBins:
    """Upper bounds of the buckets, one entry per bucket, ascending by (duration, tokens).

    Args:
        durations: duration upper bound (seconds) of each bucket; repeated within a 2D duration group.
        tokens: decoder-token upper bound of each bucket (2D), or ``None`` for 1D bins.
        max_tps: per-bucket cap on decoder tokens per second (2D, optional); cuts above it are TPS outliers.
        method: how the bins were estimated ('equal', 'dp', or 'manual').
        metadata: free-form provenance (tokenizer, prompt format, counts); written to the YAML.
        where: name used in validation errors (e.g. the YAML file's path).
    """

    durations: list[float]
    tokens: Optional[list[int]] = None
    max_tps: Optional[list[float]] = None
    method: str = "manual"
    metadata: dict = field(default_factory=dict)
    where: InitVar[str] = "bucket bins"

    def __post_init__(self, where: str):
        self.durations = [float(d) for d in self.durations]
        if self.tokens is not None:
            self.tokens = [int(t) for t in self.tokens]
        if self.max_tps is not None:
            self.max_tps = [float(x) for x in self.max_tps]
        self.validate(where)

    @property
    def is_2d(self) -> bool:
        return self.tokens is not None

    @property
    def num_buckets(self) -> int:
        return len(self.durations)

    def validate(self, where: str = "bucket bins") -> None:
        """Check sortedness and lengths; raise ValueError naming the field and the fix."""
        n = len(self.durations)
        if n == 0:
            raise ValueError(f"{where}: 'buckets' is empty; estimate bins with `speech-ed estimate-bins`")
        for i, d in enumerate(self.durations):
            if not d > 0:
                raise ValueError(f"{where}: bucket {i} has duration bound {d}; bounds must be > 0")
            if i and d < self.durations[i - 1]:
                raise ValueError(f"{where}: duration bounds must be non-decreasing, but bucket {i} has {d} "
                                 f"after {self.durations[i - 1]}")
        if self.tokens is None:
            if len(set(self.durations)) != n:
                raise ValueError(f"{where}: 1D duration bounds must be strictly increasing (duplicates)")
            if self.max_tps is not None:
                raise ValueError(f"{where}: 'max_tps' only applies to 2D bins")
            return
        if len(self.tokens) != n:
            raise ValueError(f"{where}: {len(self.tokens)} token bounds for {n} duration bounds; "
                             "each 2D bucket needs both [max_duration_s, max_tokens]")
        for i in range(n):
            if self.tokens[i] <= 0:
                raise ValueError(f"{where}: bucket {i} has token bound {self.tokens[i]}; bounds must be > 0")
            if i and self.durations[i] == self.durations[i - 1] and self.tokens[i] <= self.tokens[i - 1]:
                raise ValueError(f"{where}: token bounds must increase within a duration group, but bucket "
                                 f"{i} has {self.tokens[i]} after {self.tokens[i - 1]} "
                                 f"(duration {self.durations[i]})")
        if self.max_tps is not None:
            if len(self.max_tps) != n:
                raise ValueError(f"{where}: 'max_tps' has {len(self.max_tps)} entries for {n} buckets; "
                                 "give one per bucket or omit it")
            if any(not x > 0 for x in self.max_tps):
                raise ValueError(f"{where}: 'max_tps' entries must be > 0")

    def duration_groups(self) -> list[tuple[float, int, int]]:
        """``(duration bound, first bucket, end bucket)`` per duration group (1D: one bucket per group)."""
        groups, start = [], 0
        for i in range(1, self.num_buckets + 1):
            if i == self.num_buckets or self.durations[i] != self.durations[start]:
                groups.append((self.durations[start], start, i))
                start = i
        return groups

    def to_1d(self) -> "BucketBins":
        """The duration groups as 1D bins (a 2D grid used as a 1D sampler)."""
        if not self.is_2d:
            return self
        bounds = [g[0] for g in self.duration_groups()]
        return BucketBins(bounds, method=self.method, metadata=dict(self.metadata))


def _ceil_to(x: float, step: float) -> float:
    """Round up to a multiple of ``step`` (robust to float noise like 14.085000000000001)."""
    return math.ceil(round(x / step, 6)) * step


def equal_total_bounds(sorted_values: np.ndarray, num_bins: int) -> list[float]:
    """Upper bounds splitting sorted values into ``num_bins`` runs of (about) equal total; duplicates merged.

    Args:
        sorted_values: (N,) ascending lengths.
        num_bins: wanted number of bins.

    Returns:
        Ascending unique upper bounds; the last is the maximum value.
    """
    if len(sorted_values) == 0:
        raise ValueError("cannot estimate bins from zero cuts")
    csum = np.cumsum(sorted_values, dtype=np.float64)
    targets = csum[-1] * np.arange(1, num_bins) / num_bins
    idx = np.minimum(np.searchsorted(csum, targets, side="left"), len(sorted_values) - 1)
    bounds = np.append(sorted_values[idx], sorted_values[-1])
    return [float(b) for b in np.unique(bounds)]


def min_padding_bounds(sorted_values: np.ndarray, num_bins: int) -> list[float]:
    """Exact minimum-padding split of sorted values into at most ``num_bins`` contiguous bins.

    Minimises ``sum_i (bound(i) - value_i)`` where ``bound(i)`` is the upper bound (maximum) of value i's bin.
    Dynamic programme over the U distinct values, O(num_bins x U), using the monotone convex-hull trick: the
    cost of bin (i, j] is ``v_j (C_j - C_i) - (S_j - S_i)`` with C, S prefix counts and sums, which is linear
    in ``v_j`` for fixed i, with slopes falling as i grows, and the queries ``v_j`` rise.

    Args:
        sorted_values: (N,) ascending lengths.
        num_bins: maximum number of bins.

    Returns:
        Ascending upper bounds (values from the data); the last is the maximum.
    """
    if len(sorted_values) == 0:
        raise ValueError("cannot estimate bins from zero cuts")
    values, counts = np.unique(sorted_values, return_counts=True)
    u = len(values)
    k_max = min(num_bins, u)
    v = values.astype(np.float64).tolist()
    C = [0.0] + np.cumsum(counts, dtype=np.float64).tolist()
    S = [0.0] + np.cumsum(values * counts, dtype=np.float64).tolist()
    # f[j] = min padding of the first j distinct values in k bins; values indexed 1..u.
    inf = float("inf")
    f = [inf] * (u + 1)
    f[0] = 0.0
    choice = []
    for _ in range(k_max):  # one more bucket per pass
        g = [inf] * (u + 1)
        arg = [0] * (u + 1)
        hull_m, hull_b, hull_i = [], [], []  # lines y = m x + b, slopes strictly decreasing
        head = 0
        for j in range(1, u + 1):
            i = j - 1  # line for split point i becomes available for queries j > i
            if f[i] < inf:
                m, b = -C[i], f[i] + S[i]
                while len(hull_m) - head >= 2:
                    m1, b1, m2, b2 = hull_m[-2], hull_b[-2], hull_m[-1], hull_b[-1]
                    # drop the last line if the new one overtakes it before it overtook its predecessor
                    if (b - b1) * (m1 - m2) <= (b2 - b1) * (m1 - m):
                        hull_m.pop(), hull_b.pop(), hull_i.pop()
                    else:
                        break
                hull_m.append(m), hull_b.append(b), hull_i.append(i)
                head = min(head, len(hull_m) - 1)
            if len(hull_m) == head:
                continue
            x = v[j - 1]
            while (len(hull_m) - head >= 2
                   and hull_m[head + 1] * x + hull_b[head + 1] <= hull_m[head] * x + hull_b[head]):
                head += 1
            g[j] = hull_m[head] * x + hull_b[head] + x * C[j] - S[j]
            arg[j] = hull_i[head]
        choice.append(arg)
        f = g
    # backtrack from (k_max, u)
    bounds, j = [], u
    for k in range(k_max, 0, -1):
        bounds.append(v[j - 1])
        j = choice[k - 1][j]
    return sorted(set(bounds))


def _partition(sorted_values: np.ndarray, num_bins: int, method: str) -> list[float]:
    if method == "equal":
        return equal_total_bounds(sorted_values, num_bins)
    if method == "dp":
        return min_padding_bounds(sorted_values, num_bins)
    raise ValueError(f"unknown estimation method {method!r}; expected one of {ESTIMATION_METHODS}")


def tps_inliers(durations: np.ndarray, tokens: np.ndarray, num_sigmas: float) -> np.ndarray:
    """Mask of cuts whose tokens-per-second is at most mean + num_sigmas x std (one-sided z-score)."""
    tps = tokens / durations
    std = float(tps.std())
    if std == 0.0 or not math.isfinite(num_sigmas):
        return np.ones(len(tps), dtype=bool)
    return (tps - tps.mean()) / std <= num_sigmas


def estimate_bucket_bins(durations: np.ndarray, tokens: Optional[np.ndarray] = None, num_buckets: int = 30,
                         num_subbuckets: Optional[int] = None, method: str = "equal", tps_sigmas: float = 4.0,
                         duration_grid_s: float = 0.01) -> BucketBins:
    """Estimate 1D (``num_subbuckets=None``) or 2D bucket bins from per-cut lengths.

    Args:
        durations: (N,) seconds per cut.
        tokens: (N,) decoder tokens per cut (prompt included); required for 2D.
        num_buckets: number of duration groups (fewer if duplicate bounds merge).
        num_subbuckets: token sub-buckets per duration group; ``None`` gives 1D bins.
        method: 'equal' (equal total duration / tokens) or 'dp' (minimum padding).
        tps_sigmas: 2D only: TPS outlier threshold in standard deviations above the group mean.
        duration_grid_s: duration bounds are rounded up to this grid (and 'dp' works on it).

    Returns:
        The bins; ``max_tps`` is set for 2D. Counting what the bins would drop is left to
        :func:`speech_ed.sampling.assignment.BucketAssigner`.
    """
    if method not in ESTIMATION_METHODS:
        raise ValueError(f"unknown estimation method {method!r}; expected one of {ESTIMATION_METHODS}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    durations = np.asarray(durations, dtype=np.float64)
    if len(durations) == 0:
        raise ValueError("cannot estimate bins from zero cuts")
    if np.any(durations <= 0):
        raise ValueError("every cut needs a positive duration to estimate bins")
    # Round up to the grid first so bounds never fall below a cut they were estimated on.
    grid = np.ceil(np.round(durations / duration_grid_s, 6)) * duration_grid_s
    order = np.argsort(grid, kind="stable")
    dur_bounds = [_ceil_to(b, duration_grid_s) for b in _partition(grid[order], num_buckets, method)]
    dur_bounds = sorted(set(round(b, 6) for b in dur_bounds))
    if num_subbuckets is None:
        return BucketBins(dur_bounds, method=method)
    if tokens is None:
        raise ValueError("2D bins need per-cut token counts")
    if num_subbuckets < 1:
        raise ValueError(f"num_subbuckets must be >= 1, got {num_subbuckets}")
    tokens = np.asarray(tokens, dtype=np.int64)
    group_of = np.searchsorted(np.asarray(dur_bounds), grid - 1e-9, side="left")
    out_d, out_t, out_tps = [], [], []
    for g, bound in enumerate(dur_bounds):
        sel = group_of == g
        if not np.any(sel):
            continue
        d, t = durations[sel], tokens[sel]
        keep = tps_inliers(d, t, tps_sigmas)
        d, t = d[keep], t[keep]
        # +1e-9 relative: the cap is the largest inlier TPS, stored as a float the YAML round-trips.
        max_tps = float(np.max(t / d)) * (1 + 1e-9)
        tok_bounds = [int(b) for b in _partition(np.sort(t).astype(np.float64), num_subbuckets, method)]
        for tb in sorted(set(tok_bounds)):
            out_d.append(bound)
            out_t.append(tb)
            out_tps.append(max_tps)
    return BucketBins(out_d, out_t, out_tps, method=method)


def estimate_open_1d_bins(durations: np.ndarray, num_buckets: int) -> BucketBins:
    """Equal-duration 1D bins estimated from a sample of ``durations`` (seconds): the last bucket is unbounded,
    so a cut longer than any in the sample goes there instead of being dropped."""
    bins = estimate_bucket_bins(durations, num_buckets=num_buckets, method="equal")
    return BucketBins(bins.durations[:-1] + [float("inf")], method="equal")
