"""Callbacks: per-step throughput and bucket logging (audio seconds and tokens per wall second, lr, bucket).

Per step (every ``trainer.log_every_n_steps``, so 1 means every step), next to what the LightningModule logs
(loss, ``train/batch_size``, ``train/input_padding``, ``train/output_padding``: global rank 0's batch), this adds
``train/audio_s_per_s``, ``train/tokens_per_s``, ``train/step_s``, ``train/lr``, ``train/audio_seconds`` and,
with the '2d' or '1d' sampler, ``train/bucket``: the bucket the step was drawn from (-1 for the end-of-epoch
batches that mix buckets). The same step summed over every rank (one small all-gather per step under DDP) is
logged as ``train/all_ranks/{batch_size,input_padding,output_padding,audio_seconds,audio_s_per_s,tokens_per_s}``:
padding = padded / all samples (tokens) of all ranks' batches together, throughput = all ranks' audio (tokens)
over the slowest rank's step time. With W&B, :func:`define_wandb_metrics` sets every metric's step axis to
``trainer/global_step`` and the run summaries (mean padding and throughput, min loss, last lr).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch

from speech_ed.sampling.strategies import WITH_BINS

MIXED_BUCKET = -1


class BatchBucket:
    """Which bucket a collated batch came from, recomputed from its lengths.

    The sampler decides one bucket per step from each cut's (duration, decoder tokens). A collated batch
    carries exactly those numbers: ``audio_lens / sample_rate`` is the cut's duration (durations are
    num_samples / rate) and ``token_lens`` is :func:`count_decoder_tokens`. So the bucket is found again here,
    without the sampler (which runs ahead of training by the prefetched batches) having to report it.

    Args:
        assigner: the run's :class:`speech_ed.sampling.assignment.BucketAssigner` (same bins, strictness).
        sample_rate: rate of ``batch["audio"]``.
    """

    def __init__(self, assigner, sample_rate: int):
        self.assigner = assigner
        self.sample_rate = sample_rate

    def __call__(self, batch: dict) -> int:
        """Bucket index of ``batch`` (``audio_lens`` (B,), ``token_lens`` (B,)); -1 when its cuts disagree."""
        if batch.get("bucket") is not None:  # a dataset that passes the sampler's bucket through wins
            return int(batch["bucket"])
        durations = batch["audio_lens"].detach().cpu().double().numpy() / self.sample_rate
        buckets, _ = self.assigner.assign_many(durations, batch["token_lens"].detach().cpu().numpy())
        found = np.unique(buckets)
        return int(found[0]) if len(found) == 1 and found[0] >= 0 else MIXED_BUCKET


def bucket_finder(datamodule, sample_rate: int) -> BatchBucket | None:
    """A :class:`BatchBucket` for a data module that samples with 2D/1D bucket bins (the bins it was given,
    ``datamodule.bucketing``), else None."""
    cfg = getattr(datamodule, "cfg", None)
    if cfg is None or cfg.data.sampler not in WITH_BINS or not cfg.data.bucket_bins:
        return None
    from speech_ed.sampling.assignment import BucketAssigner

    bins = datamodule.bucketing.bins
    if cfg.data.sampler == "1d" and bins.is_2d:
        bins = bins.to_1d()  # '1d' batches by the duration groups of 2D bins
    return BatchBucket(BucketAssigner(bins, strict=cfg.data.strict_2d), sample_rate)


ALL_RANKS = "train/all_ranks/"
_TOTALS = ("utterances", "audio_samples", "audio_slots", "tokens", "token_slots")

WANDB_SUMMARIES = {
    "train/loss": "min", "train/att": "min", "train/ctc": "min", "train/lr": "last",
    "train/input_padding": "mean", "train/output_padding": "mean", "train/batch_size": "mean",
    "train/audio_s_per_s": "mean", "train/tokens_per_s": "mean", "train/step_s": "mean",
    f"{ALL_RANKS}input_padding": "mean", f"{ALL_RANKS}output_padding": "mean", f"{ALL_RANKS}batch_size": "mean",
    f"{ALL_RANKS}audio_s_per_s": "mean", f"{ALL_RANKS}tokens_per_s": "mean", f"{ALL_RANKS}audio_seconds": "mean",
    "dev/loss": "min", "dev/wer": "min",
}
"""Summary of each training metric in the W&B run (what its runs table and report panels show)."""


def define_wandb_metrics(run, step_metric: str = "trainer/global_step") -> None:
    """Declare the step axis of every ``train/`` and ``dev/`` metric and the summaries of WANDB_SUMMARIES."""
    run.define_metric(step_metric)
    for pattern in ("train/*", "dev/*"):
        run.define_metric(pattern, step_metric=step_metric)
    for name, summary in WANDB_SUMMARIES.items():
        run.define_metric(name, step_metric=step_metric, summary=summary)


def batch_totals(batch: dict) -> torch.Tensor:
    """(5,) float64 sums of one batch: utterances, audio samples, padded audio slots (B x S), decoder tokens and
    token slots (B x U); padding over any set of batches is ``1 - samples / slots`` of their summed totals."""
    a, t = batch["audio"], batch["tokens"]
    return torch.tensor([a.shape[0], float(batch["audio_lens"].sum()), a.numel(), float(batch["token_lens"].sum()),
                         t.numel()], dtype=torch.float64)


def all_ranks_metrics(totals: torch.Tensor, step_s: float | None, sample_rate: int, gather=None) -> dict:
    """``train/all_ranks/*`` from this rank's :func:`batch_totals` and step time.

    Args:
        totals: (5,) this rank's totals.
        step_s: this rank's step time (None on the first step: no throughput yet).
        sample_rate: of ``batch["audio"]``.
        gather: ``f(tensor (6,)) -> (world, 6)`` across ranks (Lightning's ``strategy.all_gather``); None for
            one process.
    """
    local = torch.cat([totals, torch.tensor([step_s if step_s is not None else -1.0], dtype=torch.float64)])
    rows = gather(local).reshape(-1, local.shape[0]).double().cpu() if gather is not None else local[None]
    utts, samples, slots, tokens, token_slots = rows[:, :5].sum(dim=0).tolist()
    audio_s = samples / sample_rate
    out = {f"{ALL_RANKS}batch_size": utts, f"{ALL_RANKS}audio_seconds": audio_s,
           f"{ALL_RANKS}input_padding": 1.0 - samples / max(slots, 1.0),
           f"{ALL_RANKS}output_padding": 1.0 - tokens / max(token_slots, 1.0)}
    slowest = float(rows[:, 5].max())
    if step_s is not None and slowest > 0:
        out.update({f"{ALL_RANKS}audio_s_per_s": audio_s / slowest, f"{ALL_RANKS}tokens_per_s": tokens / slowest})
    return out


class ThroughputLogger(L.Callback):
    """Logs ``train/audio_s_per_s``, ``train/tokens_per_s``, ``train/step_s``, ``train/lr``, ``train/bucket``.

    The step time runs from the end of one step to the end of the next, so data waiting is included: it is
    the throughput a user gets, not the model's alone. At the end of fitting a W&B run is finished, so its
    offline files are complete and a later run in the same process starts a new one.
    """

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = sample_rate
        self._last = None
        self._bucket: BatchBucket | None = None
        self.audio_seconds = 0.0
        self.tokens = 0

    def on_train_start(self, trainer, pl_module):
        self._bucket = bucket_finder(getattr(trainer, "datamodule", None), self.sample_rate)
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and trainer.is_global_zero:
                define_wandb_metrics(lg.experiment)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` of work done between steps (e.g. a dev evaluation) out of the next step's time."""
        if self._last is not None:
            self._last += seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        audio_s = batch["audio_lens"].sum().item() / self.sample_rate
        tokens = int(batch["token_lens"].sum().item())
        self.audio_seconds += audio_s
        self.tokens += tokens
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        metrics = {"train/lr": lr, "train/audio_seconds": audio_s}
        if self._bucket is not None and batch["audio"].shape[0] > 0:
            metrics["train/bucket"] = float(self._bucket(batch))
        dt = None
        if self._last is not None:
            dt = max(now - self._last, 1e-9)
            metrics.update({"train/step_s": dt, "train/audio_s_per_s": audio_s / dt,
                            "train/tokens_per_s": tokens / dt})
        gather = None
        if trainer.world_size > 1:  # every rank reaches this hook at every step, so the collective matches
            gather = lambda x: trainer.strategy.all_gather(x.to(pl_module.device))
        metrics.update(all_ranks_metrics(batch_totals(batch), dt, self.sample_rate, gather))
        self._last = now
        pl_module.log_dict(metrics, batch_size=max(1, batch["audio"].shape[0]))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if trainer.is_global_zero and any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            import wandb

            if wandb.run is not None:  # the run WandbLogger started (it reuses wandb.run when one exists)
                wandb.run.finish()
