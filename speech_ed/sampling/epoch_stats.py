"""What an epoch of a :class:`~speech_ed.sampling.sampler.BucketingSampler` holds: per corpus, and per bucket.

Both are computed from the epoch's lengths alone (vectorised), so they can be printed before training starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from speech_ed.sampling.assignment import STATUS_NAMES
from speech_ed.sampling.index import REASONS


def _assigned(sampler):
    """The current epoch's sequence and each position's (bucket, status) under the sampler's bins."""
    seq = sampler.epoch_sequence()
    tokens = seq.tokens if sampler.plan.uses_tokens else np.zeros(len(seq), dtype=np.int64)
    buckets, statuses = sampler.plan.assigner.assign_many(seq.durations, tokens)
    return seq, buckets, statuses


def corpus_stats(sampler) -> dict[str, dict[str, Any]]:
    """Per corpus: its cuts and hours, what this epoch draws of it, and the skips and drops by reason."""
    mix = sampler.mix
    seq, _, statuses = _assigned(sampler)
    out = {}
    for s, src in enumerate(sampler.sources):
        sel = seq.source == s
        ix = src.index
        row: dict[str, Any] = {"cuts": len(ix), "hours": round(ix.hours, 3), "weight": mix.weights[s],
                               "epoch_cuts": int(sel.sum()),
                               "epoch_hours": round(float(seq.durations[sel].sum()) / 3600, 3),
                               "skipped": {}, "dropped": {}}
        codes, counts = np.unique(seq.status[sel], return_counts=True)
        row["skipped"] = {REASONS[int(c)]: int(n) for c, n in zip(codes, counts) if c}
        ok = sel & (seq.status == 0)
        codes, counts = np.unique(statuses[ok], return_counts=True)
        row["dropped"] = {STATUS_NAMES[int(c)]: int(n) for c, n in zip(codes, counts) if c >= 2}
        promoted = int(np.sum(statuses[ok] == 1))
        if promoted:
            row["promoted"] = promoted
        row["epoch_cuts_used"] = row["epoch_cuts"] - sum(row["skipped"].values()) - sum(row["dropped"].values())
        out[getattr(src, "name", f"corpus{s}")] = row
    return out


def bucket_fill(sampler) -> dict[str, Any]:
    """How much of an epoch can be drawn bucket by bucket at this world size.

    A step takes a full batch for every rank from one bucket, so a bucket holding fewer than
    ``world_size x batch size`` of the epoch's cuts never fills a step: its cuts are packed with their
    neighbours' at the end of the epoch. Returns the number of buckets and of those that fill at least one
    step, and the share of the epoch's cuts in them.
    """
    plan = sampler.active_plan
    seq, buckets, _ = _assigned(sampler)
    buckets = buckets[(buckets >= 0) & (seq.status == 0)]
    if plan is sampler.warmup_plan:
        buckets = sampler.group_of[buckets]
    counts = np.bincount(buckets, minlength=plan.planner.num_buckets)
    policy, upper, W = plan.planner.policy, plan.planner.upper, sampler.world_size
    step = np.array([W * policy.ready_size(b, u if np.isfinite(u) else 0.0) for b, u in enumerate(upper)])
    filling = counts >= step
    return {"buckets": int(len(counts)), "buckets_filling_a_step": int(filling.sum()),
            "share_in_filling_buckets": float(counts[filling].sum() / max(counts.sum(), 1))}
