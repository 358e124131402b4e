"""The sampler at many ranks: a simulated 16-rank epoch over a corpus several times the buffer.

Every rank is its own ``BucketingSampler`` (as in DDP, where each process plans alone): batch sizes per rank
match the single-rank plan, all ranks take the same number of steps from the same bucket, every cut is used
exactly once except the counted drops, no step is forced partial, and a state saved by rank 0 resumes every rank
exactly. ``scripts/bench_sampler_scale.py`` measures the same properties at 1M cuts and 64 ranks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from lhotse import CutSet, MonoCut, SupervisionSegment

from speech_ed.sampling import BucketAssigner, BucketingSampler, estimate_bucket_bins
from speech_ed.sampling.planner import needed_buffer_size

W = 16


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    n = 24000
    d = np.round(rng.gamma(3.0, 2.0, size=n).clip(0.5, 16.0), 2)
    t = (np.round(d * rng.normal(3.0, 0.5, size=n)).clip(1) + 6).astype(int)
    cuts = CutSet.from_cuts(
        MonoCut(id=f"c{i:06d}", start=0.0, duration=float(d[i]), channel=0,
                supervisions=[SupervisionSegment(id=f"c{i:06d}", recording_id=f"c{i:06d}", start=0.0,
                                                 duration=float(d[i]), text="x", language="en")])
        for i in range(n))
    bins = estimate_bucket_bins(d[:-300], t[:-300], num_buckets=6, num_subbuckets=3, method="equal")
    assigner = BucketAssigner(bins)
    sizes = [max(4, int(120 // u)) for u in bins.durations]  # like OOMptimizer sizes: shorter buckets, more cuts
    tokens = {c.id: int(x) for c, x in zip(cuts, t)}
    return cuts, tokens, bins, assigner, sizes


def _sampler(corpus, world_size, rank, buffer_size):
    cuts, tokens, bins, _, sizes = corpus
    return BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, batch_sizes=sizes,
                            world_size=world_size, rank=rank, seed=3, buffer_size=buffer_size)


def _epoch(sampler, epoch=1):
    sampler.set_epoch(epoch)
    out = []
    for batch in sampler:
        out.append(([c.id for c in batch], sampler.last_bucket))
    return out


def test_16_ranks_keep_the_single_rank_batch_sizes(corpus):
    cuts, tokens, bins, assigner, sizes = corpus
    needed = needed_buffer_size(_sampler(corpus, W, 0, 1).plan.planner.policy,
                                [assigner.upper_duration(b) for b in range(assigner.num_buckets)], W)
    buffer_size = int(1.2 * needed)
    assert len(cuts) >= 3 * buffer_size  # the stream is several times the buffer: steps come from a window
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a buffer this size must not warn
        samplers = [_sampler(corpus, W, r, buffer_size) for r in range(W)]
    runs = [_epoch(s) for s in samplers]
    single = _sampler(corpus, 1, 0, None)
    single_run = _epoch(single)

    duration = {c.id: c.duration for c in cuts}
    assert len({len(r) for r in runs}) == 1  # equal step counts
    for step in zip(*runs):
        assert len({bucket for _, bucket in step}) == 1  # every rank draws from the same bucket
        bucket = step[0][1]
        if bucket >= 0:  # a bucket step: each rank's batch is that bucket's size, as on one rank
            for ids, _ in step:
                assert len(ids) == sizes[bucket]
                assert {assigner.assign(duration[i], tokens[i])[0] for i in ids} == {bucket}
    stats = samplers[0].stats
    assert stats["forced_steps"] == 0
    assert stats["tail_steps"] < 0.1 * stats["steps"]
    mean = np.mean([len(ids) for run in runs for ids, _ in run])
    mean_single = np.mean([len(ids) for ids, _ in single_run])
    assert mean >= 0.95 * mean_single, (mean, mean_single)

    used = [i for run in runs for ids, _ in run for i in ids]
    originals = [i for i in used if "_dup" not in i]
    assert len(originals) == len(set(originals))  # no cut twice
    assert sum("_dup" in i for i in used) == stats["duplicated"]
    dropped = {c.id for c in cuts if assigner.assign(c.duration, tokens[c.id])[0] < 0}
    assert dropped and set(originals) == {c.id for c in cuts} - dropped
    assert stats["cuts_dropped"] == len(dropped)


def test_a_buffer_too_small_warns_naming_the_size_needed(corpus):
    with pytest.warns(UserWarning, match=r"buffer_size=500 is below the (\d+) cuts needed") as caught:
        sampler = _sampler(corpus, W, 0, 500)
        iter(sampler)
    needed = int(__import__("re").search(r"below the (\d+) cuts", str(caught[0].message)).group(1))
    assert needed == sampler.active_plan.needed_buffer_size() > 500
    _epoch(sampler)
    assert sampler.stats["forced_steps"] > 0  # counted, never silent


@pytest.mark.parametrize("rank", [0, 7, 15])
def test_rank0_state_resumes_every_rank_exactly(corpus, rank):
    """In DDP only rank 0's checkpoint is written; every rank restores from it and re-reads its own cuts."""
    import torch

    full = _epoch(_sampler(corpus, W, rank, None))
    writer = _sampler(corpus, W, 0, None)
    writer.set_epoch(1)
    it = iter(writer)
    k = len(full) // 2
    for _ in range(k + 2):  # two more steps prefetched by the DataLoader
        next(it)
    state = writer.state_dict(consumed=k)
    torch.save(state, "/dev/null")  # picklable the way Lightning writes it
    resumed = _sampler(corpus, W, rank, None)
    resumed.load_state_dict(state)
    rest = [([c.id for c in b], resumed.last_bucket) for b in resumed]
    assert full[:k] + rest == full
