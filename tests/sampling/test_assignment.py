"""Every cut lands in the bucket its (duration, tokens) dictates; misfits are dropped (strict) or promoted."""

import numpy as np
import pytest

from speech_ed.sampling import BucketAssigner, BucketBins, count_statuses
from speech_ed.sampling.assignment import OK, PROMOTED, TOO_LONG, TOO_MANY_TOKENS, TPS_OUTLIER

# two duration groups (<= 2 s, <= 4 s) with two token sub-buckets each
BINS = BucketBins([2.0, 2.0, 4.0, 4.0], [10, 20, 25, 40], [8.0, 8.0, 9.0, 9.0])


@pytest.mark.parametrize("duration,tokens,expected", [
    (1.0, 5, (0, OK)), (2.0, 10, (0, OK)), (2.0, 11, (1, OK)), (2.5, 11, (2, OK)), (4.0, 26, (3, OK)),
    (4.1, 5, (-1, TOO_LONG)), (1.9, 21, (-1, TOO_MANY_TOKENS)),   # 21 > 20: too many for the 2 s group
    (1.0, 9, (-1, TPS_OUTLIER)),                                  # 9 tokens/s > max_tps 8
])
def test_strict_assignment(duration, tokens, expected):
    assert BucketAssigner(BINS).assign(duration, tokens) == expected


def test_lenient_promotes_to_first_bucket_that_holds_both():
    lenient = BucketAssigner(BINS, strict=False)
    assert lenient.assign(1.9, 21) == (2, PROMOTED)   # the 4 s group holds 21 tokens
    assert lenient.assign(1.0, 9) == (0, PROMOTED)    # TPS is ignored when promoting
    assert lenient.assign(3.0, 41) == (-1, TOO_MANY_TOKENS)
    assert lenient.assign(5.0, 1) == (-1, TOO_LONG)


@pytest.mark.parametrize("strict", [True, False])
def test_vectorised_equals_scalar_and_respects_bounds(strict):
    rng = np.random.default_rng(0)
    d = rng.uniform(0.2, 4.5, size=3000)
    t = rng.integers(1, 45, size=3000)
    assigner = BucketAssigner(BINS, strict=strict)
    buckets, statuses = assigner.assign_many(d, t)
    for i in range(len(d)):
        assert (buckets[i], statuses[i]) == assigner.assign(float(d[i]), int(t[i]))
    groups = BINS.duration_groups()
    for i in np.flatnonzero(statuses == OK):  # the smallest duration group, then the smallest sub-bucket
        b = buckets[i]
        g = next(k for k, (bound, s, e) in enumerate(groups) if s <= b < e)
        assert d[i] <= BINS.durations[b] and (g == 0 or d[i] > groups[g - 1][0])
        assert t[i] <= BINS.tokens[b] and (b == groups[g][1] or t[i] > BINS.tokens[b - 1])
        assert t[i] <= BINS.max_tps[b] * d[i]
    counts = count_statuses(statuses)
    assert sum(counts.values()) == int(np.sum(statuses != OK)) and "ok" not in counts


def test_1d_and_no_bins():
    one_d = BucketAssigner(BucketBins([1.0, 3.0]))
    assert one_d.assign(1.0, 999) == (0, OK) and one_d.assign(3.5, 0) == (-1, TOO_LONG)
    b, s = one_d.assign_many(np.array([0.5, 2.0, 9.0]), np.zeros(3, dtype=int))
    assert b.tolist() == [0, 1, -1] and s.tolist() == [OK, OK, TOO_LONG]
    assert BucketAssigner(None).assign(100.0, 10**6) == (0, OK)
