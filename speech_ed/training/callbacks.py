"""Callbacks: per-step throughput logging (audio seconds and tokens per wall second, learning rate)."""

from __future__ import annotations

import time

import lightning as L


class ThroughputLogger(L.Callback):
    """Logs ``train/audio_s_per_s``, ``train/tokens_per_s``, ``train/step_s`` and ``train/lr`` every step.

    The step time runs from the end of one step to the end of the next, so data waiting is included: it is
    the throughput a user gets, not the model's alone.
    """

    def __init__(self, sample_rate: int = 16000):
        self.sample_rate = sample_rate
        self._last = None
        self.audio_seconds = 0.0
        self.tokens = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.monotonic()
        audio_s = batch["audio_lens"].sum().item() / self.sample_rate
        tokens = int(batch["token_lens"].sum().item())
        self.audio_seconds += audio_s
        self.tokens += tokens
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        metrics = {"train/lr": lr, "train/audio_seconds": audio_s}
        if self._last is not None:
            dt = max(now - self._last, 1e-9)
            metrics.update({"train/step_s": dt, "train/audio_s_per_s": audio_s / dt, "train/tokens_per_s": tokens / dt})
        self._last = now
        pl_module.log_dict(metrics, batch_size=max(1, batch["audio"].shape[0]))
