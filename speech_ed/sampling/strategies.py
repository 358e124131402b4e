"""The names of the batching strategies: the one vocabulary of config, CLI, padding report, efficiency study, W&B.

* ``random``: speech_ed's :class:`~speech_ed.sampling.sampler.BucketingSampler` without buckets (shuffled
  cuts under a padding-aware duration budget);
* ``1d``: speech_ed's 1D bucketing, by duration (on 2D bins: their duration groups);
* ``2d``: speech_ed's 2D bucketing, by duration x decoder tokens (per-bucket batch sizes possible);
* ``lhotse``: lhotse's ``DynamicBucketingSampler`` (1D duration buckets it estimates itself), the baseline.

Why these names: the sampler and ``speech-ed padding-report`` already used them; they say the one thing that
differs between speech_ed's own strategies (how many dimensions a bucket has), and the one sampler that is not
ours is named after its library, so "1D bucketing" never means two different samplers. The config values of
before (``dynamic``, ``bucket1d``, ``bucket2d``) are refused with their new name (:data:`RENAMED`).
"""

from __future__ import annotations

from typing import Literal, get_args

BucketingStrategy = Literal["random", "1d", "2d"]
"""What :class:`~speech_ed.sampling.sampler.BucketingSampler` does."""
Strategy = Literal[BucketingStrategy, "lhotse"]
"""Every batching strategy (``data.sampler``, ``padding-report --strategy``)."""

BUCKETING_STRATEGIES: tuple[str, ...] = get_args(BucketingStrategy)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
WITH_BINS = ("1d", "2d")
"""Strategies that bucket on ``bucket_bins.yaml``."""
RENAMED = {"dynamic": "lhotse", "bucket1d": "1d", "bucket2d": "2d"}
"""Old name -> name now (refused with a message naming the new one)."""
