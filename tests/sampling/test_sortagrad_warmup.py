"""SortaGrad with 2D bins: the first epoch batches by duration group (mixed token sub-buckets), later epochs by 2D
bucket; both epochs train on the same cuts and respect per-bucket batch sizes."""

import numpy as np
import pytest
from lhotse import CutSet

from speech_ed.sampling import BucketAssigner, BucketingSampler, estimate_bucket_bins
from tests.sampling.helpers import synthetic_cuts


@pytest.fixture(scope="module")
def data():
    cuts, tokens = synthetic_cuts()
    d = np.array([c.duration for c in cuts])
    t = np.array([tokens[c.id] for c in cuts])
    bins = estimate_bucket_bins(d[:-50], t[:-50], num_buckets=5, num_subbuckets=3, method="dp")
    return cuts, tokens, bins


def epoch(sampler, e):
    sampler.set_epoch(e)
    out = []
    for batch in sampler:
        out.append(([c.id for c in batch], sampler.last_bucket))
    return out


def buckets_of(batch_ids, tokens, cuts_by_id, assigner):
    return {assigner.assign(cuts_by_id[i].duration, tokens[i])[0] for i in batch_ids}


def test_first_epoch_mixes_sub_buckets_later_epochs_do_not(data):
    cuts, tokens, bins = data
    by_id = {c.id: c for c in cuts}
    assigner = BucketAssigner(bins, strict=True)
    group_of = {b: g for g, (_, a, e) in enumerate(bins.duration_groups()) for b in range(a, e)}
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                               sortagrad=True, buffer_size=10000, seed=1)
    first = epoch(sampler, 0)
    mixed = 0
    for ids, bucket in first:
        b2d = buckets_of(ids, tokens, by_id, assigner)
        if bucket >= 0:  # a main step: one duration group; reported as the group's first 2D bucket
            assert len({group_of[b] for b in b2d}) == 1
            assert bucket == bins.duration_groups()[group_of[next(iter(b2d))]][1]
            mixed += len(b2d) > 1
    assert mixed > 0, "the warm-up epoch should mix token sub-buckets within a duration group"
    main = [b for _, b in first if b >= 0]
    assert main == sorted(main)  # still shortest first

    second = epoch(sampler, 1)
    for ids, bucket in second:
        if bucket >= 0:
            assert buckets_of(ids, tokens, by_id, assigner) == {bucket}
    seen0 = sorted(i for ids, _ in first for i in ids)
    seen1 = sorted(i for ids, _ in second for i in ids)
    assert seen0 == seen1  # same cuts (same 2D drops) in both epochs
    dropped = {c.id for c in cuts if assigner.assign(c.duration, tokens[c.id])[0] < 0}
    assert dropped and not dropped & set(seen0)


def test_warmup_uses_the_smallest_batch_size_of_each_group(data):
    cuts, tokens, bins = data
    sizes = [4 + (b % 3) * 3 for b in range(bins.num_buckets)]  # 4, 7, 10 within each group
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, batch_sizes=sizes,
                               sortagrad=True, buffer_size=10000, seed=2)
    for ids, bucket in epoch(sampler, 0):
        if bucket >= 0:
            assert len(ids) <= 4
    assert max(len(ids) for ids, b in epoch(sampler, 1) if b >= 0) > 4


def test_restore_inside_the_warmup_epoch_continues_exactly(data, tmp_path):
    cuts, tokens, bins = data
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)

    def make():
        return BucketingSampler(CutSet.from_file(path), num_tokens=lambda c: tokens[c.id], bins=bins,
                                max_duration_s=60.0, sortagrad=True, buffer_size=10000, seed=4)

    full = [ids for ids, _ in epoch(make(), 0)] + [ids for ids, _ in epoch(make(), 1)]
    first = make()
    first.set_epoch(0)
    it = iter(first)
    head = [[c.id for c in next(it)] for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    rest = [[c.id for c in b] for b in resumed]
    resumed.set_epoch(1)
    rest += [[c.id for c in b] for b in resumed]
    assert head + rest == full


def test_1d_on_2d_bins_with_sortagrad_batches_by_duration_group_shortest_first(data):
    """data.sampler=1d (the efficiency study's '1d-sortagrad' ablation): duration groups of the 2D bins,
    a padding-aware quadratic budget, the shortest group first in epoch 0 only."""
    cuts, tokens, bins = data
    by_id = {c.id: c for c in cuts}
    groups = bins.duration_groups()
    assigner = BucketAssigner(bins.to_1d())  # duration only: the bucket is the group
    budget, q = 40.0, 15.0
    sampler = BucketingSampler(cuts, bins=bins, strategy="1d", max_duration_s=budget, quadratic_duration_s=q,
                               sortagrad=True, buffer_size=10000, seed=3)
    first = epoch(sampler, 0)
    for ids, _ in first:
        longest = max(by_id[i].duration for i in ids)
        assert len(ids) * (longest + longest * longest / q) <= budget + 1e-6
    main = [(ids, b) for ids, b in first if b >= 0]
    for ids, b in main:  # one duration group per batch, reported as the group's index
        assert {assigner.assign(by_id[i].duration, 0)[0] for i in ids} == {b}
    assert [b for _, b in main] == sorted(b for _, b in main) and len({b for _, b in main}) == len(groups)
    later = [b for _, b in epoch(sampler, 1) if b >= 0]
    assert later != sorted(later)  # SortaGrad orders the first epoch only
    dropped = {c.id for c in cuts if assigner.assign(c.duration, 0)[0] < 0}  # longer than the longest group
    assert sorted(i for ids, _ in first for i in ids) == sorted(c.id for c in cuts if c.id not in dropped)
    assert sampler.stats["dropped_too_long"] == len(dropped)
