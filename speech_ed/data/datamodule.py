"""LightningDataModule over Lhotse cut manifests and speech_ed's bucketing samplers.

Cuts that cannot train (no supervision, empty transcript, unknown language or task, too short or too long) are
removed before sampling by :class:`CountingFilter`, which counts each reason; audio that fails to load is
counted by the dataset. Both counts reach the training log and ``train_stats.json``.

Resume: Lightning stores :meth:`AEDDataModule.state_dict` in every checkpoint. It holds the training sampler's
state after the last step that training consumed (counted in :meth:`AEDDataModule.on_before_batch_transfer`,
so batches the DataLoader prefetched are handed out again, not lost) and the filter's counts. With
``data.sampler`` 'bucket2d', 'bucket1d' or 'random' the next run continues with exactly the batches the
interrupted run would have produced; lhotse's 'dynamic' sampler cannot, and restarts its epoch (with a warning).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

from speech_ed.config import ExperimentConfig
from speech_ed.data.dataset import AEDDataset
from speech_ed.data.prompt import count_decoder_tokens, cut_target
from speech_ed.data.tokenizer import TASKS, Tokenizer
from speech_ed.sampling import BucketingSampler
from speech_ed.sampling.stream import open_manifest

SAMPLER_STRATEGY = {"bucket2d": "2d", "bucket1d": "1d", "random": "random"}  # data.sampler -> BucketingSampler


class CountingFilter:
    """Predicate for ``CutSet.filter`` that counts why each rejected cut was rejected."""

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
        if not target.text.strip():
            return "empty_transcript"
        if not (self.tokenizer.has_language(target.source_lang) and self.tokenizer.has_language(target.target_lang)):
            return "unknown_language"
        if target.task not in TASKS:
            return "unknown_task"
        return None

    def __call__(self, cut) -> bool:
        why = self.reason(cut)
        if why is not None:
            self.rejected.setdefault(why, set()).add(cut.id)
        return why is None

    @property
    def counts(self) -> dict[str, int]:
        return {why: len(ids) for why, ids in sorted(self.rejected.items())}


def manifest_path(cfg: ExperimentConfig, split: str) -> Path:
    root = Path(cfg.data.manifest_dir) if cfg.data.manifest_dir else cfg.run_dir / "manifests"
    path = root / f"cuts_{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (set data.manifest_dir or run the recipe's prepare stage)")
    return path


class AEDDataModule(L.LightningDataModule):
    """Train/dev loaders for one experiment config.

    Args:
        cfg: the resolved experiment config.
        tokenizer: the run's tokenizer (token counts for bucketing use :func:`count_decoder_tokens`).
    """

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        d = cfg.data
        self.train_filter = CountingFilter(tokenizer, d.min_duration_s, d.max_utterance_s, cfg.tokenizer.pnc)
        self.dataset = AEDDataset(tokenizer, pnc=cfg.tokenizer.pnc, sample_rate=cfg.model.sample_rate)
        self.sampler = None
        self._consumed = 0  # training steps of the current sampler epoch that reached the model
        self._sampler_epoch = None
        self._restored: dict | None = None

    def num_tokens(self, cut) -> int:
        return count_decoder_tokens(cut, self.tokenizer, self.cfg.tokenizer.pnc)

    def build_train_sampler(self, cuts: CutSet):
        d = self.cfg.data
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if d.sampler == "dynamic":
            return DynamicBucketingSampler(cuts, max_duration=d.max_duration_s, num_buckets=d.num_buckets,
                                           quadratic_duration=d.quadratic_duration_s, shuffle=d.shuffle,
                                           buffer_size=d.buffer_size, seed=d.seed, world_size=world_size,
                                           rank=rank, drop_last=False)
        from speech_ed.sampling import load_bucket_batch_sizes, load_bucket_bins

        bins = load_bucket_bins(d.bucket_bins) if d.bucket_bins else None
        batch_sizes = load_bucket_batch_sizes(d.bucket_batch_sizes, bins) if d.bucket_batch_sizes else None
        return BucketingSampler(cuts, num_tokens=self.num_tokens, bins=bins,
                                strategy=SAMPLER_STRATEGY[d.sampler], batch_sizes=batch_sizes,
                                max_duration_s=d.max_duration_s, quadratic_duration_s=d.quadratic_duration_s,
                                shuffle=d.shuffle, seed=d.seed, buffer_size=d.buffer_size, world_size=world_size,
                                rank=rank, sortagrad=d.sortagrad, strict=d.strict_2d)

    def train_dataloader(self):
        cuts = open_manifest(manifest_path(self.cfg, "train"))
        if self.cfg.data.sampler == "dynamic":
            cuts = cuts.filter(self.train_filter)
        self.sampler = self.build_train_sampler(cuts)
        if self.cfg.data.sampler != "dynamic":
            self.sampler.filter(self.train_filter)  # counted by the sampler too (dropped_filtered)
        self._consumed, self._sampler_epoch = 0, None
        restored, self._restored = self._restored, None
        if restored is not None:
            if restored.get("sampler") is not None and self.cfg.data.sampler != "dynamic":
                self.sampler.load_state_dict(restored["sampler"])
                self._consumed, self._sampler_epoch = self.sampler.steps_done, self.sampler.epoch
            elif self.cfg.data.sampler == "dynamic":
                warnings.warn("data.sampler=dynamic (lhotse) cannot resume mid-epoch: the interrupted epoch "
                              "starts again from its beginning; use bucket2d or random for an exact resume")
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
        """Distinct cuts the training filter removed so far, by reason."""
        return dict(self.train_filter.counts)
