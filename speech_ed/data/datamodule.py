"""LightningDataModule over training corpora (``data.inputs``) and speech_ed's bucketing samplers.

Training inputs are Lhotse manifests, Lhotse Shar directories or NeMo manifests, mixed by weight
(:mod:`speech_ed.data.sources`); without ``data.inputs`` the run's ``manifests/cuts_train.jsonl.gz``. Each input
is indexed once (lengths, token counts, skip reasons; cached under ``<run_dir>/index_cache``, built in
``prepare_data`` by one process per node). Cuts that cannot train (no supervision, empty transcript, unknown
language or task, too short or too long) are skipped by the sampler and counted per corpus; audio that fails
to load is counted by the dataset. Both counts reach the training log and ``train_stats.json``.

Resume: Lightning stores :meth:`AEDDataModule.state_dict` in every checkpoint. It holds the training sampler's
state after the last step that training consumed (counted in :meth:`AEDDataModule.on_before_batch_transfer`,
so batches the DataLoader prefetched are handed out again, not lost) and the filter's counts. With
``data.sampler`` '2d', '1d' or 'random' the next run continues with exactly the batches the interrupted run
would have produced; the 'lhotse' sampler cannot, and restarts its epoch (with a warning).

Bucket bins and per-bucket batch sizes are read and checked once (:func:`load_bucketing`), by training before
any data is read, and handed to the data module (the sampler) and the callbacks (``datamodule.bucketing``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

from speech_ed.config import ExperimentConfig
from speech_ed.data.dataset import AEDDataset
from speech_ed.data.indexing import problem
from speech_ed.data.prompt import count_decoder_tokens, cut_target
from speech_ed.data.sources import InputSpec, open_sources
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.paths import RunPaths
from speech_ed.sampling import BucketingSampler
from speech_ed.sampling.io import BinsAndBatchSizes, load_bins_and_batch_sizes
from speech_ed.sampling.stream import open_manifest


class CountingFilter:
    """Predicate for ``CutSet.filter`` that counts why each rejected cut was rejected (lhotse's sampler; the
    bucketing samplers read the same reasons from the corpus index)."""

    def __init__(self, tokenizer: Tokenizer, min_duration_s: float, max_duration_s: float, pnc: bool = False):
        self.tokenizer, self.pnc = tokenizer, pnc
        self.min_duration_s, self.max_duration_s = min_duration_s, max_duration_s
        self.rejected: dict[str, set] = {}  # reason -> cut ids; ids, so a second epoch does not count twice

    def reason(self, cut) -> str | None:
        if cut.duration < self.min_duration_s:
            return "too_short"
        if cut.duration > self.max_duration_s:
            return "too_long"
        try:
            target = cut_target(cut, self.pnc)
        except ValueError:
            return "no_supervision"
        return problem(target, self.tokenizer)

    def __call__(self, cut) -> bool:
        why = self.reason(cut)
        if why is not None:
            self.rejected.setdefault(why, set()).add(cut.id)
        return why is None

    @property
    def counts(self) -> dict[str, int]:
        return {why: len(ids) for why, ids in sorted(self.rejected.items())}


def training_inputs(cfg: ExperimentConfig) -> list[InputSpec]:
    """``data.inputs`` as :class:`InputSpec` (default: the run's ``cuts_train.jsonl.gz``)."""
    if not cfg.data.inputs:
        return [InputSpec(str(manifest_path(cfg, "train")), "lhotse", "train")]
    return [InputSpec(i.path, i.format, i.name, i.weight, i.language, i.task, i.target_language)
            for i in cfg.data.inputs]


def training_sources(cfg: ExperimentConfig, tokenizer: Tokenizer, num_workers: int | None = None) -> list:
    """The sampler sources of the training inputs (indexes from ``<run_dir>/index_cache``, built if missing)."""
    d = cfg.data
    return open_sources(training_inputs(cfg), tokenizer, RunPaths.from_config(cfg).index_cache, cfg.tokenizer.pnc,
                        d.min_duration_s, d.max_utterance_s, num_workers)


def load_bucketing(cfg: ExperimentConfig) -> BinsAndBatchSizes | None:
    """``data.bucket_bins`` and ``data.bucket_batch_sizes``, read and checked together
    (:func:`speech_ed.sampling.io.load_bins_and_batch_sizes`: the sizes must record the bins they were measured
    on, and be these); None for the 'lhotse' sampler, which reads neither."""
    d = cfg.data
    if d.sampler == "lhotse":
        return None
    return load_bins_and_batch_sizes(d.bucket_bins, d.bucket_batch_sizes, require_recorded=True)


def manifest_path(cfg: ExperimentConfig, split: str) -> Path:
    path = RunPaths.from_config(cfg).manifest(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (set data.manifest_dir or run the recipe's prepare stage)")
    return path


class AEDDataModule(L.LightningDataModule):
    """Train/dev loaders for one experiment config.

    Args:
        cfg: the resolved experiment config.
        tokenizer: the run's tokenizer (token counts for bucketing use :func:`count_decoder_tokens`).
        bucketing: the bins and batch sizes of ``cfg`` as training read them (:func:`load_bucketing`); None
            reads them on first use.
    """

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer, bucketing: BinsAndBatchSizes | None = None):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self._bucketing = bucketing
        d = cfg.data
        self.train_filter = CountingFilter(tokenizer, d.min_duration_s, d.max_utterance_s, cfg.tokenizer.pnc)
        self.dataset = AEDDataset(tokenizer, pnc=cfg.tokenizer.pnc, sample_rate=cfg.model.sample_rate)
        self.sampler = None
        self._consumed = 0  # training steps of the current sampler epoch that reached the model
        self._sampler_epoch = None
        self._restored: dict | None = None

    @property
    def bucketing(self) -> BinsAndBatchSizes | None:
        """The run's bins and batch sizes (None for the 'lhotse' sampler), read once."""
        if self._bucketing is None and self.cfg.data.sampler != "lhotse":
            self._bucketing = load_bucketing(self.cfg)
        return self._bucketing

    def num_tokens(self, cut) -> int:
        return count_decoder_tokens(cut, self.tokenizer, self.cfg.tokenizer.pnc)

    def prepare_data(self) -> None:
        """Index the training inputs once per node (Lightning calls this on one process per node)."""
        if self.cfg.data.sampler != "lhotse":
            training_sources(self.cfg, self.tokenizer)

    def build_train_sampler(self):
        d = self.cfg.data
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if d.sampler == "lhotse":
            cuts = open_manifest(manifest_path(self.cfg, "train")).filter(self.train_filter)
            return DynamicBucketingSampler(cuts, max_duration=d.max_duration_s, num_buckets=d.num_buckets,
                                           quadratic_duration=d.quadratic_duration_s, shuffle=d.shuffle,
                                           buffer_size=d.buffer_size or 20000, seed=d.seed,
                                           world_size=world_size, rank=rank, drop_last=False)
        bins, batch_sizes = self.bucketing.bins, self.bucketing.batch_sizes
        sources = training_sources(self.cfg, self.tokenizer, num_workers=0)
        weights = [i.weight for i in d.inputs] if d.inputs and d.inputs[0].weight is not None else None
        sampler = BucketingSampler(sources=sources, weights=weights, cuts_per_epoch=d.cuts_per_epoch, bins=bins,
                                   strategy=d.sampler, batch_sizes=batch_sizes,
                                   max_duration_s=d.max_duration_s, quadratic_duration_s=d.quadratic_duration_s,
                                   shuffle=d.shuffle, seed=d.seed, buffer_size=d.buffer_size,
                                   world_size=world_size, rank=rank, sortagrad=d.sortagrad, strict=d.strict_2d)
        if rank == 0:
            print_corpus_table(sampler.corpus_stats(), sampler)
        return sampler

    def train_dataloader(self):
        self.sampler = self.build_train_sampler()
        self._consumed, self._sampler_epoch = 0, None
        restored, self._restored = self._restored, None
        if restored is not None:
            state = restored.get("sampler")
            if state is not None and self.cfg.data.sampler != "lhotse" and state.get("format", 1) != 2:
                # written by speech_ed before the scale-correct sampler: the weights, optimiser and step count
                # still resume; only the interrupted epoch cannot continue batch for batch
                warnings.warn("the checkpoint's sampler state is from an older speech_ed: training resumes (weights, "
                              "optimiser, step count), but the interrupted epoch starts again from its beginning")
                self.sampler.set_epoch(int(state.get("epoch", 0)))
            elif state is not None and self.cfg.data.sampler != "lhotse":
                self.sampler.load_state_dict(state)
                self._consumed, self._sampler_epoch = self.sampler.steps_done, self.sampler.epoch
            elif self.cfg.data.sampler == "lhotse":
                warnings.warn("data.sampler=lhotse cannot resume mid-epoch: the interrupted epoch starts again "
                              "from its beginning; use 2d, 1d or random for an exact resume")
        return torch.utils.data.DataLoader(self.dataset, sampler=self.sampler, batch_size=None,
                                           num_workers=self.cfg.data.num_workers,
                                           persistent_workers=self.cfg.data.num_workers > 0)

    def val_dataloader(self):
        cuts = open_manifest(manifest_path(self.cfg, "dev"))
        sampler = DynamicCutSampler(cuts, max_duration=self.cfg.data.max_duration_s, shuffle=False, drop_last=False)
        return torch.utils.data.DataLoader(self.dataset, sampler=sampler, batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training steps that reach the model (called by Lightning for each one, in order)."""
        trainer = self.trainer
        if trainer is not None and trainer.training and self.sampler is not None:
            epoch = getattr(self.sampler, "epoch", None)
            if epoch != self._sampler_epoch:  # a new epoch of the sampler began
                self._sampler_epoch, self._consumed = epoch, 0
            self._consumed += 1
        return batch

    def state_dict(self) -> dict:
        """Sampler state after the last consumed step, and the filter's rejected cut ids (for the counts)."""
        sampler_state = None
        if isinstance(self.sampler, BucketingSampler):
            sampler_state = self.sampler.state_dict(consumed=self._consumed)
        return {"sampler": sampler_state,
                "filter_rejected": {k: sorted(v) for k, v in self.train_filter.rejected.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        """Called by Lightning before ``train_dataloader``; the sampler state is applied when it is built."""
        self.train_filter.rejected = {k: set(v) for k, v in state_dict.get("filter_rejected", {}).items()}
        self._restored = state_dict

    def skip_counts(self) -> dict:
        """Distinct cuts that cannot train, by reason: of every corpus (bucketing samplers), or removed by the
        filter so far (lhotse's sampler)."""
        if isinstance(self.sampler, BucketingSampler):
            total: dict[str, int] = {}
            for src in self.sampler.sources:
                for why, n in src.index.skipped().items():
                    total[why] = total.get(why, 0) + n
            return dict(sorted(total.items()))
        return dict(self.train_filter.counts)

    def corpus_stats(self) -> dict:
        """Per training corpus: cuts, hours, weight, this epoch's draw and its skips/drops by reason."""
        return self.sampler.corpus_stats() if isinstance(self.sampler, BucketingSampler) else {}


def print_corpus_table(stats: dict, sampler) -> None:
    """The training corpora, one line each, with what the sampler will do with them (printed at start)."""
    total = max(sum(row["epoch_cuts"] for row in stats.values()), 1)
    print(f"{'corpus':<24}{'cuts':>10}{'hours':>10}{'epoch share':>12}{'epoch cuts':>12}{'skipped':>9}{'dropped':>9}")
    for name, row in stats.items():
        print(f"{name:<24}{row['cuts']:>10}{row['hours']:>10.1f}{100 * row['epoch_cuts'] / total:>11.1f}%"
              f"{row['epoch_cuts']:>12}{sum(row['skipped'].values()):>9}{sum(row['dropped'].values()):>9}"
              + (f"   skipped {row['skipped']}" if row['skipped'] else "")
              + (f"   dropped {row['dropped']}" if row['dropped'] else ""))
    planner = sampler.active_plan.planner
    print(f"sampler: {sampler.strategy}, world size {sampler.world_size}, buffer {planner.buffer_size} cuts "
          f"(needed {sampler.active_plan.needed_buffer_size()}), {sampler.mix.cuts_per_epoch} cuts per epoch")
    fill = sampler.bucket_fill()
    share = fill["share_in_filling_buckets"]
    print(f"sampler: {fill['buckets_filling_a_step']} of {fill['buckets']} buckets hold a full step for every rank "
          f"({100 * share:.0f} % of the epoch's cuts)"
          + ("; the rest is packed across neighbouring buckets at the end of the epoch" if share < 1 else "")
          + (" -- with this many ranks, fewer buckets (estimate-bins --num-buckets / --sub-buckets) would keep "
             "more batches within one bucket" if share < 0.5 else ""))
