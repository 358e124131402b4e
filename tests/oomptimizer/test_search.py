"""The pure batch-size search, driven by fake fits oracles (monotone, noisy and never failing)."""

import random

import pytest

from speech_ed.oomptimizer.search import find_max_batch_size, search_buckets, search_order


def threshold(t):
    return lambda bs: bs <= t


@pytest.mark.parametrize("true_max", [1, 2, 7, 31, 32, 33, 100, 513, 5000])
@pytest.mark.parametrize("start", [1, 32, 1000])
def test_monotone_oracle_within_gap(true_max, start):
    res = find_max_batch_size(threshold(true_max), start=start, rel_gap=0.05)
    assert 1 <= res.batch_size <= true_max
    hi = res.smallest_failure
    assert hi is not None and hi > true_max
    assert hi - res.batch_size <= 1 or (hi - res.batch_size) / hi <= 0.05
    # the answer and the bound were both observed
    assert any(t.batch_size == res.batch_size and t.fits for t in res.trials)
    assert any(t.batch_size == hi and not t.fits for t in res.trials)


@pytest.mark.parametrize("true_max", [3, 50, 777])
def test_zero_gap_is_exact(true_max):
    assert find_max_batch_size(threshold(true_max), start=32, rel_gap=0.0).batch_size == true_max


def test_doubles_then_bisects_like_nemo():
    sizes = [t.batch_size for t in find_max_batch_size(threshold(100), start=32, rel_gap=0.05).trials]
    assert sizes[:3] == [32, 64, 128]  # doubling until the first failure
    assert all(64 < s < 128 for s in sizes[3:])  # then only between the last success and the failure


def test_halves_when_start_fails():
    res = find_max_batch_size(threshold(5), start=64, rel_gap=0.05)
    assert [t.batch_size for t in res.trials][:4] == [64, 32, 16, 8]
    assert res.batch_size == 5


def test_nothing_fits_gives_zero():
    res = find_max_batch_size(lambda bs: False, start=16)
    assert res.batch_size == 0 and res.smallest_failure == 1
    assert [t.batch_size for t in res.trials] == [16, 8, 4, 2, 1]


def test_never_failing_oracle_is_capped():
    res = find_max_batch_size(lambda bs: True, start=3, max_batch_size=100)
    assert res.capped and res.batch_size == 100 and res.smallest_failure is None
    assert res.num_trials <= 8


@pytest.mark.parametrize("seed", range(20))
def test_noisy_non_monotone_oracle_terminates_on_an_observed_success(seed):
    rng = random.Random(seed)
    true_max = rng.randint(10, 3000)

    def noisy(bs):  # random spurious failures below the limit and spurious successes just above it
        if bs <= true_max:
            return rng.random() > 0.15
        return bs <= true_max * 1.1 and rng.random() < 0.3

    res = find_max_batch_size(noisy, start=rng.choice([1, 32, 512]), rel_gap=0.05)
    assert res.num_trials <= 40
    if res.batch_size:
        assert any(t.batch_size == res.batch_size and t.fits for t in res.trials)
        assert res.batch_size < res.smallest_failure
        assert res.batch_size <= true_max * 1.1


def test_invalid_arguments():
    with pytest.raises(ValueError):
        find_max_batch_size(threshold(3), start=0)
    with pytest.raises(ValueError):
        find_max_batch_size(threshold(3), rel_gap=1.0)


def test_buckets_largest_first_each_starting_at_twice_the_previous():
    bins = [(2.0, 10), (2.0, 20), (5.0, 30), (10.0, 60)]
    limits = {0: 400, 1: 300, 2: 120, 3: 50}  # smaller buckets fit more
    calls = []

    def fits(b, bs):
        calls.append((b, bs))
        return bs <= limits[b]

    results = search_buckets(bins, fits, start=32, rel_gap=0.05)
    assert search_order(bins) == [3, 2, 1, 0]
    order = [b for i, (b, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != b]
    assert order == [3, 2, 1, 0]
    first = {b: next(bs for bb, bs in calls if bb == b) for b in range(4)}
    assert first[3] == 32
    for prev, cur in [(3, 2), (2, 1), (1, 0)]:
        assert first[cur] == 2 * results[prev].batch_size
    for b, r in enumerate(results):
        assert r.batch_size <= limits[b] and (limits[b] - r.batch_size) / limits[b] <= 0.05
