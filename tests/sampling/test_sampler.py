"""BucketingSampler: exact coverage, counted drops, rank synchronisation, constraints, determinism, memory."""

import numpy as np
import pytest

from speech_ed.sampling import (
    BucketAssigner,
    BucketingSampler,
    Lengths,
    build_plan,
    estimate_bucket_bins,
    simulate_epoch,
)
from speech_ed.sampling.sampler import epoch_rng
from tests.sampling.helpers import synthetic_cuts


@pytest.fixture(scope="module")
def data():
    cuts, tokens = synthetic_cuts()
    d = np.array([c.duration for c in cuts])
    t = np.array([tokens[c.id] for c in cuts])
    bins = estimate_bucket_bins(d[:-50], t[:-50], num_buckets=5, num_subbuckets=3, method="dp")  # some misfit
    return cuts, tokens, bins


def run_epoch(sampler, epoch=0):
    sampler.set_epoch(epoch)
    batches, buckets = [], []
    for batch in sampler:
        batches.append([c.id for c in batch])
        buckets.append(sampler.last_bucket)
    return batches, buckets


def expected_drops(cuts, tokens, bins, strict=True):
    assigner = BucketAssigner(bins, strict=strict)
    return {c.id for c in cuts if assigner.assign(c.duration, tokens[c.id])[0] < 0}


@pytest.mark.parametrize("strategy", ["random", "1d", "2d"])
@pytest.mark.parametrize("lazy", [False, True])
def test_every_cut_once_except_counted_drops(tmp_path, data, strategy, lazy):
    cuts, tokens, bins = data
    if lazy:
        cuts.to_file(tmp_path / "cuts.jsonl.gz")
        cuts_in = type(cuts).from_file(tmp_path / "cuts.jsonl.gz")
        assert cuts_in.is_lazy
    else:
        cuts_in = cuts
    sampler = BucketingSampler(cuts_in, num_tokens=lambda c: tokens[c.id],
                               bins=bins if strategy != "random" else None, strategy=strategy,
                               max_duration_s=60.0, buffer_size=200, seed=3)
    batches, _ = run_epoch(sampler)
    seen = [cid for b in batches for cid in b]
    assert len(seen) == len(set(seen))
    dropped = set()
    if strategy != "random":
        dropped = expected_drops(cuts, tokens, bins if strategy == "2d" else bins.to_1d())
    assert set(seen) == {c.id for c in cuts} - dropped
    stats = sampler.stats
    assert stats["cuts_seen"] == len(cuts) and stats["cuts_dropped"] == len(dropped)
    assert stats["cuts_yielded"] == len(seen) and stats["batches"] == len(batches)
    if strategy == "2d":
        assert dropped  # the bins were estimated without the last 50 cuts, so some do not fit


def test_budget_and_bucket_purity(data):
    cuts, tokens, bins = data
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                               quadratic_duration_s=30.0)
    assigner = BucketAssigner(bins)
    for ids, bucket in zip(*run_epoch(sampler)):
        ds = [cuts[i].duration for i in ids]
        longest = max(ds)
        assert len(ids) == 1 or len(ids) * (longest + longest ** 2 / 30.0) <= 60.0
        if bucket >= 0:  # drawn from one bucket: every cut belongs to it
            assert {assigner.assign(cuts[i].duration, tokens[i])[0] for i in ids} == {bucket}


def test_fixed_batch_sizes_are_exact(data):
    cuts, tokens, bins = data
    sizes = list(range(20, 20 + bins.num_buckets))
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, batch_sizes=sizes)
    batches, buckets = run_epoch(sampler)
    assert any(b >= 0 for b in buckets)
    for ids, bucket in zip(batches, buckets):
        if bucket >= 0:
            assert len(ids) == sizes[bucket]
        else:  # mixed end-of-epoch batch: no larger than its envelope bucket allows
            longest = max(cuts[i].duration for i in ids)
            env = BucketAssigner(bins).envelope(longest, max(tokens[i] for i in ids))
            assert len(ids) <= sizes[env]


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_draw_the_same_bucket_and_get_equal_batch_counts(data, world_size):
    cuts, tokens, bins = data
    samplers = [BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                                 world_size=world_size, rank=r, seed=7) for r in range(world_size)]
    runs = [run_epoch(s, epoch=1) for s in samplers]
    assert len({len(b) for b, _ in runs}) == 1
    assert all(buckets == runs[0][1] for _, buckets in runs)
    all_ids = [cid for b, _ in runs for batch in b for cid in batch]
    assert len(all_ids) == len(set(all_ids))  # ranks never share a cut
    assert set(all_ids) == {c.id for c in cuts} - expected_drops(cuts, tokens, bins)


def test_more_ranks_than_leftover_cuts_duplicates_and_counts():
    cuts, tokens = synthetic_cuts(n=5)
    samplers = [BucketingSampler(cuts, strategy="random", max_duration_s=1000.0, world_size=8, rank=r)
                for r in range(8)]
    runs = [run_epoch(s)[0] for s in samplers]
    assert all(len(r) == 1 and len(r[0]) == 1 for r in runs)
    assert samplers[0].stats["duplicated"] == 3
    ids = [r[0][0] for r in runs]
    assert len(set(ids)) == 8 and sum("_dup" in i for i in ids) == 3


def test_deterministic_given_seed_and_varies_with_epoch(data):
    cuts, tokens, bins = data

    def make(seed):
        return BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                                seed=seed)

    assert run_epoch(make(1)) == run_epoch(make(1))
    assert run_epoch(make(1))[0] != run_epoch(make(2))[0]
    assert run_epoch(make(1), epoch=0)[0] != run_epoch(make(1), epoch=1)[0]


def test_sortagrad_first_epoch_goes_shortest_first(data):
    cuts, tokens, bins = data
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                               sortagrad=True, buffer_size=10000)
    _, buckets = run_epoch(sampler, epoch=0)
    main = [b for b in buckets if b >= 0]
    assert main == sorted(main)
    _, later = run_epoch(sampler, epoch=1)
    assert [b for b in later if b >= 0] != sorted(b for b in later if b >= 0)


def test_simulation_yields_the_samplers_batches(data):
    cuts, tokens, bins = data
    ids = np.array([c.id for c in cuts])
    lengths = Lengths(ids, np.array([c.duration for c in cuts]), np.array([tokens[i] for i in ids]))
    for strategy in ("random", "1d", "2d"):
        b = None if strategy == "random" else bins
        sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=b, strategy=strategy,
                                   max_duration_s=45.0, seed=5, buffer_size=150)
        report, sim = simulate_epoch(lengths, strategy, b, max_duration_s=45.0, seed=5, buffer_size=150)
        assert [list(ids[x]) for x in sim] == run_epoch(sampler)[0]
        assert report["num_batches"] == len(sim)


def test_buffer_stays_bounded():
    rng = np.random.default_rng(0)
    n, buffer_size = 20000, 300
    d = rng.uniform(1, 20, size=n)
    t = (d * 3).astype(int) + 6
    bins = estimate_bucket_bins(d, t, 10, 3)
    plan = build_plan("2d", bins, max_duration_s=100.0, buffer_size=buffer_size)
    buckets, statuses = plan.assigner.assign_many(d, t)
    pulled = [0]

    def items():
        for i in range(n):
            pulled[0] += 1
            yield i, float(d[i]), int(t[i]), int(buckets[i]), int(statuses[i])

    yielded = 0
    for step in plan.planner.plan(items(), epoch_rng(0, 0)):
        stats = plan.planner.stats
        in_flight = pulled[0] - yielded - sum(v for k, v in stats.items() if k.startswith("dropped_"))
        assert in_flight <= buffer_size
        yielded += sum(len(b) for b in step.batches)
    assert yielded + plan.planner.summary()["cuts_dropped"] == n


def test_drop_last_drops_and_counts_the_leftovers(data):
    cuts, tokens, bins = data
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0,
                               drop_last=True)
    batches, buckets = run_epoch(sampler)
    assert all(b >= 0 for b in buckets) and sampler.stats["dropped_drop_last"] > 0
    assert sum(map(len, batches)) + sampler.stats["cuts_dropped"] == len(cuts)


@pytest.mark.parametrize("strategy, epoch", [("2d", 2), ("1d", 0), ("1d", 2), ("random", 1)])
def test_resume_from_state_dict(data, strategy, epoch):
    cuts, tokens, bins = data

    def make():  # SortaGrad on: epoch 0 of '1d' goes shortest first
        return BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=None if strategy == "random" else bins,
                                strategy=strategy, max_duration_s=60.0, seed=4, sortagrad=True)

    full, _ = run_epoch(make(), epoch=epoch)
    first = make()
    first.set_epoch(epoch)
    it = iter(first)
    head = [[c.id for c in next(it)] for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    rest = [[c.id for c in batch] for batch in resumed]
    assert head + rest == full


def test_settings_are_checked_before_reading_data(data):
    cuts, tokens, bins = data
    with pytest.raises(ValueError, match="batch_sizes has 2 entries but the bins have 15 buckets"):
        BucketingSampler(cuts, num_tokens=len, bins=bins, batch_sizes=[4, 5])
    with pytest.raises(ValueError, match="needs bucket bins"):
        BucketingSampler(cuts, strategy="2d", max_duration_s=10.0)
    with pytest.raises(ValueError, match="needs num_tokens"):
        BucketingSampler(cuts, bins=bins, max_duration_s=10.0)
    with pytest.raises(ValueError, match="batch_sizes .* or max_duration_s"):
        BucketingSampler(cuts, num_tokens=len, bins=bins)


def test_plugs_into_a_dataloader(data):
    import torch

    cuts, tokens, bins = data

    class CountingDataset(torch.utils.data.Dataset):
        def __getitem__(self, batch):
            return len(batch)

    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=60.0)
    loader = torch.utils.data.DataLoader(CountingDataset(), sampler=sampler, batch_size=None)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        sizes = list(loader)
        assert sum(sizes) == sampler.stats["cuts_yielded"] == len(cuts) - sampler.stats["cuts_dropped"]


def test_lhotse_filter_is_honoured_and_counted(data):
    cuts, tokens, bins = data
    sampler = BucketingSampler(cuts, strategy="random", max_duration_s=60.0)
    sampler.filter(lambda c: c.duration < 5.0)
    batches, _ = run_epoch(sampler)
    short = {c.id for c in cuts if c.duration < 5.0}
    assert {i for b in batches for i in b} == short
    assert sampler.stats["dropped_filtered"] == len(cuts) - len(short) == sampler.stats["cuts_dropped"]
