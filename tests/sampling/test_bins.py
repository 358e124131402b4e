"""Bin estimation: the known equal-total method, the exact minimum-padding programme, 2D structure, YAML."""

import itertools

import numpy as np
import pytest

from speech_ed.sampling import (
    BucketBins,
    equal_total_bounds,
    estimate_bucket_bins,
    load_bucket_batch_sizes,
    load_bucket_bins,
    min_padding_bounds,
    save_bucket_batch_sizes,
    save_bucket_bins,
)


def brute_force_padding(values, k):
    """Least padding over every split of the distinct sorted values into at most k runs."""
    uniq = sorted(set(values))
    best = float("inf")
    for n_cuts in range(0, min(k, len(uniq)) - 0):
        for cuts in itertools.combinations(range(1, len(uniq)), n_cuts):
            bounds = [uniq[c - 1] for c in cuts] + [uniq[-1]]
            best = min(best, padding_to_bounds(values, bounds))
    return best


def padding_to_bounds(values, bounds):
    idx = np.searchsorted(np.asarray(bounds), values, side="left")
    return float(np.sum(np.asarray(bounds)[idx] - values))


def test_equal_total_bounds_hand_example():
    # total 20: two bins of ~10 each -> the first bound is where the running sum reaches 10
    assert equal_total_bounds(np.array([1.0, 1, 2, 2, 4, 10]), 2) == [4.0, 10.0]
    assert equal_total_bounds(np.array([5.0, 5, 5, 5]), 3) == [5.0]  # duplicates merge


@pytest.mark.parametrize("seed", range(6))
def test_min_padding_bounds_is_exact(seed):
    rng = np.random.default_rng(seed)
    values = np.sort(rng.integers(1, 30, size=int(rng.integers(5, 25))).astype(float))
    for k in (1, 2, 3, 4):
        bounds = min_padding_bounds(values, k)
        assert len(bounds) <= k and bounds[-1] == values.max()
        assert padding_to_bounds(values, bounds) == pytest.approx(brute_force_padding(values, k))


def test_dp_never_pads_more_than_equal():
    rng = np.random.default_rng(0)
    d = np.sort(rng.gamma(4.0, 3.0, size=3000) + 0.5)
    for k in (5, 10, 30):
        dp, equal = min_padding_bounds(d, k), equal_total_bounds(d, k)
        assert padding_to_bounds(d, dp) <= padding_to_bounds(d, equal)


def lengths(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.uniform(1.0, 20.0, size=n)
    t = np.maximum(1, np.round(d * rng.normal(3.0, 0.3, size=n))).astype(int) + 6
    return d, t


@pytest.mark.parametrize("method", ["equal", "dp"])
def test_2d_bins_structure(method):
    d, t = lengths()
    t[0] = 400  # one extreme tokens-per-second outlier
    bins = estimate_bucket_bins(d, t, num_buckets=6, num_subbuckets=3, method=method)
    assert bins.is_2d and bins.num_buckets == 18 and len(bins.max_tps) == 18
    groups = bins.duration_groups()
    assert len(groups) == 6 and groups[-1][0] >= d.max()
    for _, start, end in groups:  # token bounds rise inside a group; one max_tps per group
        assert bins.tokens[start:end] == sorted(set(bins.tokens[start:end]))
        assert len(set(bins.max_tps[start:end])) == 1
    assert all(abs(x * 100 - round(x * 100)) < 1e-6 for x in bins.durations)  # 10 ms grid
    outlier_group = next(g for g in groups if g[0] >= d[0])
    assert 400 / d[0] > bins.max_tps[outlier_group[1]]


def test_1d_bins_cover_the_data():
    d, _ = lengths()
    bins = estimate_bucket_bins(d, num_buckets=10, method="dp")
    assert not bins.is_2d and bins.num_buckets == 10 and bins.durations[-1] >= d.max()


def test_bins_validation_errors():
    with pytest.raises(ValueError, match="non-decreasing"):
        BucketBins([2.0, 1.0])
    with pytest.raises(ValueError, match="token bounds must increase"):
        BucketBins([1.0, 1.0], [10, 10])
    with pytest.raises(ValueError, match="2 token bounds for 3"):
        BucketBins([1.0, 2.0, 3.0], [1, 2])
    with pytest.raises(ValueError, match="'max_tps' has 1 entries for 2 buckets"):
        BucketBins([1.0, 2.0], [5, 9], [3.0])


def test_bins_yaml_round_trip(tmp_path):
    d, t = lengths()
    bins = estimate_bucket_bins(d, t, num_buckets=4, num_subbuckets=2, method="dp")
    bins.metadata.update({"tokenizer": {"path": "tok.model", "vocab_size": 1024}, "num_dropped": 3})
    save_bucket_bins(tmp_path / "bins.yaml", bins)
    again = load_bucket_bins(tmp_path / "bins.yaml")
    assert again == bins
    one_d = estimate_bucket_bins(d, num_buckets=4)
    save_bucket_bins(tmp_path / "bins1d.yaml", one_d)
    assert load_bucket_bins(tmp_path / "bins1d.yaml") == one_d


def test_bins_yaml_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "bins.yaml"
    path.write_text("format: speech_ed.bucket_bins\nversion: 1\nkind: 2d\nbuckets: [[1.0, 5], [2.0]]\n")
    with pytest.raises(ValueError, match=r"bins.yaml: buckets\[1\]"):
        load_bucket_bins(path)
    path.write_text("format: speech_ed.bucket_bins\nversion: 9\nbuckets: [1.0]\n")
    with pytest.raises(ValueError, match="'version' is 9"):
        load_bucket_bins(path)
    path.write_text("format: speech_ed.bucket_bins\nnum_buckets: 3\nbuckets: [1.0, 2.0]\n")
    with pytest.raises(ValueError, match="'num_buckets' is 3 but 'buckets' has 2"):
        load_bucket_bins(path)


def test_batch_sizes_must_match_bins(tmp_path):
    bins = BucketBins([1.0, 1.0, 2.0], [5, 9, 12])
    save_bucket_batch_sizes(tmp_path / "bs.yaml", [30, 20, 10], bins)
    assert load_bucket_batch_sizes(tmp_path / "bs.yaml", bins) == [30, 20, 10]
    with pytest.raises(ValueError, match="3 batch sizes but the bucket bins have 2 buckets"):
        load_bucket_batch_sizes(tmp_path / "bs.yaml", BucketBins([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"bucket 2 is \[2.0, 12\] in field 'buckets' but \[3.0, 12\] in the bucket "
                                         "bins: the batch sizes were measured for other bins"):
        load_bucket_batch_sizes(tmp_path / "bs.yaml", BucketBins([1.0, 1.0, 3.0], [5, 9, 12]))
    (tmp_path / "bad.yaml").write_text("batch_sizes: [3, 0]\n")
    with pytest.raises(ValueError, match="integers >= 1"):
        load_bucket_batch_sizes(tmp_path / "bad.yaml")


def test_bins_and_batch_sizes_are_read_and_checked_together(tmp_path):
    from speech_ed.sampling.io import load_bins_and_batch_sizes

    bins = BucketBins([1.0, 1.0, 2.0], [5, 9, 12])
    save_bucket_bins(tmp_path / "bins.yaml", bins)
    save_bucket_batch_sizes(tmp_path / "bs.yaml", [30, 20, 10], bins, model_hash="abc")
    loaded = load_bins_and_batch_sizes(tmp_path / "bins.yaml", tmp_path / "bs.yaml", require_recorded=True)
    assert loaded.bins == bins and loaded.batch_sizes == [30, 20, 10]
    assert loaded.batch_sizes_fields["model_hash"] == "abc" and loaded.batch_sizes_path == str(tmp_path / "bs.yaml")
    assert load_bins_and_batch_sizes(tmp_path / "bins.yaml", "").batch_sizes is None
    save_bucket_bins(tmp_path / "other.yaml", BucketBins([1.0, 1.0, 2.5], [5, 9, 12]))
    with pytest.raises(ValueError, match=r"bs.yaml: bucket 2 is \[2.0, 12\] .* bucket bins \(.*other.yaml\)"):
        load_bins_and_batch_sizes(tmp_path / "other.yaml", tmp_path / "bs.yaml")
    save_bucket_batch_sizes(tmp_path / "hand.yaml", [30, 20, 10])  # records no bins
    assert load_bins_and_batch_sizes(tmp_path / "bins.yaml", tmp_path / "hand.yaml").batch_sizes == [30, 20, 10]
    with pytest.raises(ValueError, match="hand.yaml: no field 'buckets'"):
        load_bins_and_batch_sizes(tmp_path / "bins.yaml", tmp_path / "hand.yaml", require_recorded=True)
    with pytest.raises(ValueError, match="need the bucket bins"):
        load_bins_and_batch_sizes("", tmp_path / "bs.yaml")
