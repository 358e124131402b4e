"""The LightningModule: wires the AED model, its loss, AdamW with warmup + decay, and logging. Nothing else.

Faults handled here: a step whose loss is NaN or infinite is skipped (no backward, no optimizer step), counted
in ``train/non_finite_steps`` and announced; after ``trainer.max_bad_steps_in_a_row`` such steps in a row
training stops with :class:`NonFiniteLossError`. Under DDP every rank skips when any rank's loss is not finite
(or any rank's batch is empty), so the ranks never disagree on whether to all-reduce gradients.
Checkpoints carry the counts, the elapsed training time and the random generators' states, which are restored
just before the first step after a resume so a resumed run computes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

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


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss."""


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states, as plain lists and tensors."""
    np_state = np.random.get_state()
    state = {"python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        self.max_bad_steps_in_a_row = config["trainer"].get("max_bad_steps_in_a_row", 20)
        self.skipped: Counter = Counter()
        self.unk_pieces = 0
        self.non_finite_steps = 0
        self.bad_steps_in_a_row = 0
        self.empty_batches = 0
        self.last_batch_size = 0
        self._t_start = None
        self._elapsed_before_s = 0.0  # training time of the runs this one resumes
        self._rng_to_restore = None

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` holds on any rank (one tiny all-reduce, only when there are several ranks)."""
        if self.trainer is None or self.trainer.world_size == 1:
            return flag
        total = self.trainer.strategy.reduce(torch.tensor(float(flag), device=self.device), reduce_op="sum")
        return bool(total.item() > 0)

    def on_train_batch_start(self, batch, batch_idx: int):
        if self._rng_to_restore is not None:  # first step after a resume: continue the saved random streams
            states, self._rng_to_restore = self._rng_to_restore, None
            if len(states) == self.trainer.world_size:
                restore_rng_state(states[self.global_rank])
            else:
                rank_zero_warn(f"checkpoint has random states of {len(states)} ranks, this run has "
                               f"{self.trainer.world_size}: random streams (SpecAugment, dropout) start afresh")

    def training_step(self, batch: dict, batch_idx: int):
        self.skipped.update(batch["skipped"])
        self.unk_pieces += batch["unk_pieces"]
        bs = self.last_batch_size = batch["audio"].shape[0]
        if self._any_rank(bs == 0):  # every cut of a batch was skipped (counted above): no rank steps
            self.empty_batches += 1
            return None
        tokens_in, targets = split_decoder_io(batch["tokens"], batch["token_lens"])
        out = self.model(batch["audio"], batch["audio_lens"], tokens_in)
        loss, parts = compute_loss(out, targets, batch["ctc_targets"], batch["ctc_target_lens"],
                                   label_smoothing=self.loss_cfg["label_smoothing"],
                                   ctc_weight=self.loss_cfg["ctc_weight"])
        if self._any_rank(not bool(torch.isfinite(loss))):
            return self._skip_non_finite(loss, bs)
        self.bad_steps_in_a_row = 0
        in_pad, out_pad = padding_ratios(batch)
        self.log_dict({"train/loss": loss.detach(), "train/att": parts["att"], "train/ctc": parts["ctc"],
                       "train/batch_size": float(bs), "train/input_padding": in_pad,
                       "train/output_padding": out_pad}, batch_size=bs, prog_bar=False)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        return loss

    def _skip_non_finite(self, loss: torch.Tensor, bs: int):
        """Count and announce a skipped step; stop after ``max_bad_steps_in_a_row`` in a row."""
        self.non_finite_steps += 1
        self.bad_steps_in_a_row += 1
        self.log("train/non_finite_steps", float(self.non_finite_steps), batch_size=max(bs, 1))
        rank_zero_warn(f"step {self.global_step}: loss is {loss.item()} on at least one rank; step skipped "
                       f"({self.bad_steps_in_a_row} in a row, {self.non_finite_steps} in total)")
        if self.bad_steps_in_a_row >= self.max_bad_steps_in_a_row:
            raise NonFiniteLossError(
                f"{self.bad_steps_in_a_row} steps in a row had a NaN or infinite loss (limit "
                f"trainer.max_bad_steps_in_a_row={self.max_bad_steps_in_a_row}), last at step {self.global_step}. "
                "Lower optim.lr or raise optim.warmup_steps, check the data, and resume from the last checkpoint")
        return None

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
        self._t_start = time.monotonic() - self._elapsed_before_s

    def training_seconds(self) -> float:
        """Training time so far: the clock the time-based schedule runs on (resumed runs included)."""
        return time.monotonic() - self._t_start if self._t_start is not None else self._elapsed_before_s

    def pause_clock(self, seconds: float) -> None:
        """Leave ``seconds`` of work done between steps (e.g. a dev evaluation) out of the training clock."""
        if self._t_start is not None:
            self._t_start += seconds

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
        elapsed = time.monotonic() - self._t_start if self._t_start else self._elapsed_before_s
        checkpoint["speech_ed_counts"] = {"skipped": dict(self.skipped), "unk_pieces": self.unk_pieces,
                                          "non_finite_steps": self.non_finite_steps,
                                          "bad_steps_in_a_row": self.bad_steps_in_a_row,
                                          "empty_batches": self.empty_batches, "elapsed_s": elapsed}
        state = capture_rng_state()
        states = [state]
        if self.trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            states = [None] * self.trainer.world_size  # every rank's own streams (SpecAugment masks differ)
            torch.distributed.all_gather_object(states, state)
        checkpoint["speech_ed_rng"] = states

    def on_load_checkpoint(self, checkpoint: dict):
        counts = checkpoint.get("speech_ed_counts", {})
        self.skipped = Counter(counts.get("skipped", {}))
        self.unk_pieces = counts.get("unk_pieces", 0)
        self.non_finite_steps = counts.get("non_finite_steps", 0)
        self.bad_steps_in_a_row = counts.get("bad_steps_in_a_row", 0)
        self.empty_batches = counts.get("empty_batches", 0)
        self._elapsed_before_s = counts.get("elapsed_s", 0.0)
        self._rng_to_restore = checkpoint.get("speech_ed_rng")
