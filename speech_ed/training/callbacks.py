"""Callbacks: per-step throughput and bucket logging (audio seconds and tokens per wall second, lr, bucket).

Per step (every ``trainer.log_every_n_steps``, so 1 means every step), next to what the LightningModule logs
(loss, ``train/batch_size``, ``train/input_padding``, ``train/output_padding``), this adds
``train/audio_s_per_s``, ``train/tokens_per_s``, ``train/step_s``, ``train/lr``, ``train/audio_seconds`` and,
with the 2D bucketing sampler, ``train/bucket``: the bucket the step was drawn from (-1 for the end-of-epoch
batches that mix buckets).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np

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
    """A :class:`BatchBucket` for a data module that samples with 2D/1D bucket bins, else None."""
    cfg = getattr(datamodule, "cfg", None)
    if cfg is None or cfg.data.sampler not in ("bucket2d", "bucket1d") or not cfg.data.bucket_bins:
        return None
    from speech_ed.sampling import load_bucket_bins
    from speech_ed.sampling.assignment import BucketAssigner

    bins = load_bucket_bins(cfg.data.bucket_bins)
    if cfg.data.sampler == "bucket1d" and bins.is_2d:
        bins = bins.to_1d()  # 'bucket1d' batches by the duration groups of 2D bins
    return BatchBucket(BucketAssigner(bins, strict=cfg.data.strict_2d), sample_rate)


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
        if self._last is not None:
            dt = max(now - self._last, 1e-9)
            metrics.update({"train/step_s": dt, "train/audio_s_per_s": audio_s / dt,
                            "train/tokens_per_s": tokens / dt})
        self._last = now
        pl_module.log_dict(metrics, batch_size=max(1, batch["audio"].shape[0]))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if trainer.is_global_zero and any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
            import wandb

            if wandb.run is not None:  # the run WandbLogger started (it reuses wandb.run when one exists)
                wandb.run.finish()
