"""The LightningModule: wires the AED model, its loss, AdamW with warmup + decay, and logging. Nothing else."""

from __future__ import annotations

import math
import time
from collections import Counter

import lightning as L
import torch

from speech_ed.data.dataset import padding_ratios, split_decoder_io
from speech_ed.models import AEDModel, compute_loss
from speech_ed.models.dims import ModelDims


def lr_factor(step: int, elapsed_s: float, warmup_steps: int, max_steps: int, max_time_s: float | None,
              schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate.

    Linear warmup over ``warmup_steps``, then either inverse square root decay or cosine decay to
    ``min_lr_ratio``. The cosine's progress is the larger of step / max_steps and elapsed / max_time_s, so a run
    bounded by wall time still ends its schedule when its time is up (step time on shared CPUs varies by +-30%).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "inverse_sqrt":
        return math.sqrt(warmup_steps / (step + 1))
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    if max_time_s:
        progress = max(progress, elapsed_s / max_time_s)
    progress = min(progress, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class AEDLightningModule(L.LightningModule):
    """Training wrapper around :class:`speech_ed.models.AEDModel`.

    Args:
        config: the resolved experiment config as a plain dict (saved in checkpoints as hyper-parameters).
        vocab_size: the tokenizer's size.
    """

    def __init__(self, config: dict, vocab_size: int):
        super().__init__()
        self.save_hyperparameters()
        dims = ModelDims(**{**config["model"], "vocab_size": vocab_size})
        self.dims = dims
        self.model = AEDModel(dims)
        self.optim_cfg = config["optim"]
        self.loss_cfg = config["loss"]
        self.max_steps = config["trainer"]["max_steps"]
        mt = config["trainer"].get("max_time_min")
        self.max_time_s = mt * 60 if mt else None
        self.skipped: Counter = Counter()
        self.unk_pieces = 0
        self.non_finite_steps = 0
        self.last_batch_size = 0
        self._t_start = None

    def training_step(self, batch: dict, batch_idx: int):
        self.skipped.update(batch["skipped"])
        self.unk_pieces += batch["unk_pieces"]
        bs = self.last_batch_size = batch["audio"].shape[0]
        if bs == 0:  # every cut of this batch was skipped (counted above)
            return None
        tokens_in, targets = split_decoder_io(batch["tokens"], batch["token_lens"])
        out = self.model(batch["audio"], batch["audio_lens"], tokens_in)
        loss, parts = compute_loss(out, targets, batch["ctc_targets"], batch["ctc_target_lens"],
                                   label_smoothing=self.loss_cfg["label_smoothing"],
                                   ctc_weight=self.loss_cfg["ctc_weight"])
        if not torch.isfinite(loss):
            self.non_finite_steps += 1
            self.log("train/non_finite_steps", float(self.non_finite_steps), batch_size=bs)
            return None
        in_pad, out_pad = padding_ratios(batch)
        self.log_dict({"train/loss": loss.detach(), "train/att": parts["att"], "train/ctc": parts["ctc"],
                       "train/batch_size": float(bs), "train/input_padding": in_pad,
                       "train/output_padding": out_pad}, batch_size=bs, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        bs = batch["audio"].shape[0]
        if bs == 0:
            return None
        tokens_in, targets = split_decoder_io(batch["tokens"], batch["token_lens"])
        out = self.model(batch["audio"], batch["audio_lens"], tokens_in)
        loss, parts = compute_loss(out, targets, batch["ctc_targets"], batch["ctc_target_lens"],
                                   label_smoothing=0.0, ctc_weight=self.loss_cfg["ctc_weight"])
        self.log_dict({"dev/loss": loss, "dev/att": parts["att"]}, batch_size=bs, sync_dist=True)

    def on_train_start(self):
        self._t_start = time.monotonic()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # biases, norms and embeddings are not decayed
            (no_decay if p.ndim < 2 or "embed" in name or "norm" in name else decay).append(p)
        o = self.optim_cfg
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=o["lr"], betas=tuple(o["betas"]))

        def factor(step: int) -> float:
            elapsed = time.monotonic() - self._t_start if self._t_start else 0.0
            return lr_factor(step, elapsed, o["warmup_steps"], self.max_steps, self.max_time_s, o["schedule"],
                             o["min_lr_ratio"])

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict):
        checkpoint["speech_ed_counts"] = {"skipped": dict(self.skipped), "unk_pieces": self.unk_pieces,
                                          "non_finite_steps": self.non_finite_steps}

    def on_load_checkpoint(self, checkpoint: dict):
        counts = checkpoint.get("speech_ed_counts", {})
        self.skipped = Counter(counts.get("skipped", {}))
        self.unk_pieces = counts.get("unk_pieces", 0)
        self.non_finite_steps = counts.get("non_finite_steps", 0)
