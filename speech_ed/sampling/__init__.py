"""Bucketing for attention encoder-decoder training: bins (1D/2D), assignment, sampler, padding statistics.

This package knows cuts, durations and token counts only: it never imports ``speech_ed.data``, ``models``
or ``training``. Token counts come in as a callable ``num_tokens(cut) -> int`` or precomputed in a corpus index
(:mod:`speech_ed.sampling.index`, built by ``speech_ed.data.indexing``).

Modules: ``bins`` (estimation), ``assignment`` (cut -> bucket), ``constraints`` (batch sizes), ``planner`` +
``tail`` + ``state`` (an epoch's steps for every rank), ``plan`` (settings checked together), ``index`` +
``sources`` + ``mix`` (corpora, weighted), ``strategies`` (the strategies' names), ``sampler`` (the lhotse-compatible sampler), ``epoch_stats``,
``lengths`` + ``padding`` + ``simulate`` (measuring and simulating), ``io`` (YAML files: bins and batch sizes read and checked together), ``stream`` (seekable
manifests), ``tsv`` (metadata import).
"""

from speech_ed.sampling.assignment import BucketAssigner, count_statuses
from speech_ed.sampling.bins import BucketBins, equal_total_bounds, estimate_bucket_bins, min_padding_bounds
from speech_ed.sampling.constraints import DurationBudget, FixedBatchSizes
from speech_ed.sampling.io import (
    BinsAndBatchSizes,
    load_bins_and_batch_sizes,
    load_bucket_batch_sizes,
    load_bucket_bins,
    save_bucket_batch_sizes,
    save_bucket_bins,
)
from speech_ed.sampling.lengths import Lengths, measure_lengths
from speech_ed.sampling.mix import CorpusMix
from speech_ed.sampling.padding import batch_padding, padding_stats
from speech_ed.sampling.plan import build_plan
from speech_ed.sampling.planner import EpochPlanner, Step
from speech_ed.sampling.sampler import BucketingSampler
from speech_ed.sampling.simulate import simulate_epoch, simulate_lhotse_dynamic_bucketing
from speech_ed.sampling.strategies import BUCKETING_STRATEGIES, STRATEGIES
from speech_ed.sampling.tsv import TsvFormatError, import_tsv, iter_tsv_rows

__all__ = [
    "BUCKETING_STRATEGIES", "BinsAndBatchSizes", "BucketAssigner", "BucketBins", "BucketingSampler", "CorpusMix", "DurationBudget", "EpochPlanner", "FixedBatchSizes",
    "Lengths", "STRATEGIES", "Step", "TsvFormatError", "batch_padding", "build_plan", "count_statuses",
    "equal_total_bounds", "estimate_bucket_bins", "import_tsv", "iter_tsv_rows", "load_bins_and_batch_sizes", "load_bucket_batch_sizes",
    "load_bucket_bins", "measure_lengths", "min_padding_bounds", "padding_stats", "save_bucket_batch_sizes",
    "save_bucket_bins", "simulate_epoch", "simulate_lhotse_dynamic_bucketing",
]
