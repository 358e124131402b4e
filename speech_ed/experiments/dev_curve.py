"""Dev WER and loss against *training* wall time, with the evaluation time left out of every training clock.

Usage::

    curve = DevCurve(load_dev_subset(manifest, 100), tokenizer, every_s=60)
    train(cfg, callbacks=(curve,))
    curve.points    # [{"step", "train_s", "dev_wer", "dev_loss", ...}, ...]
    curve.summary() # batch sizes, padding, audio seconds per training second, eval and wall time

Every ``every_s`` seconds of training time (checked after each step, and once before the first step and once
at the end) the model decodes a fixed dev subset greedily and computes its teacher-forced loss. The time that
takes is then removed from the three clocks that would otherwise count it: the LightningModule's (the
time-based cosine schedule, :meth:`AEDLightningModule.pause_clock`), Lightning's ``max_time`` Timer (its start
is moved forward by the evaluation time) and the throughput logger's step timer. So a run with
``trainer.max_time_min=M`` trains for M minutes whatever the evaluations cost, and the curve's x axis is the
time a run without evaluations would have taken.

Per step it also records what the study reports: cuts, real and padded audio samples, real and padded decoder
tokens, audio seconds, and the largest batch shapes (for a memory check after training). Single process only.
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import lightning as L
import torch

from speech_ed.data.dataset import AEDDataset, split_decoder_io
from speech_ed.data.tokenizer import Tokenizer

LARGEST_BATCHES_KEPT = 3


def load_dev_subset(manifest, num_cuts: int, seed: int = 0) -> list:
    """A fixed subset of ``num_cuts`` dev cuts (all when there are fewer), the same for every run with ``seed``."""
    from lhotse import CutSet

    cuts = sorted(CutSet.from_file(manifest), key=lambda c: c.id)
    if not cuts:
        raise ValueError(f"{manifest}: the dev manifest is empty")
    if 0 < num_cuts < len(cuts):
        cuts = sorted(random.Random(seed).sample(cuts, num_cuts), key=lambda c: c.id)
    return cuts


class DevCurve(L.Callback):
    """Evaluates a fixed dev subset every ``every_s`` seconds of training time (see the module docstring).

    Args:
        cuts: the dev cuts (:func:`load_dev_subset`).
        tokenizer: the run's tokenizer.
        every_s: training seconds between evaluations (0: after every step).
        batch_size: most cuts per decoding batch.
        max_len_ratio: greedy decoding stops after this many tokens per encoder frame (+3).
        pnc: punctuation flag of the prompts.
        precision: ``trainer.precision``; bf16 precisions decode under bf16 autocast.
        ctc_weight: weight of the CTC term in the dev loss (as in training; label smoothing is off).
    """

    def __init__(self, cuts: list, tokenizer: Tokenizer, every_s: float = 60.0, batch_size: int = 64,
                 max_len_ratio: float = 0.6, pnc: bool = False, precision: str = "bf16-mixed",
                 ctc_weight: float = 0.3):
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.cuts, self.tokenizer, self.every_s = list(cuts), tokenizer, float(every_s)
        self.batch_size, self.max_len_ratio, self.pnc = batch_size, max_len_ratio, pnc
        self.dtype = torch.bfloat16 if precision.startswith("bf16") else None
        self.ctc_weight = ctc_weight
        self.points: list[dict] = []
        self.eval_seconds = 0.0
        self.steps = 0
        self.totals = {"cuts": 0, "real_samples": 0, "padded_samples": 0, "real_tokens": 0, "padded_tokens": 0}
        self.largest_batches: list[tuple[int, float, int]] = []  # (cuts, longest seconds, decoder tokens)
        self.train_seconds = 0.0
        self.timer_seconds: float | None = None
        self.wall_seconds = 0.0
        self._loss_batches: list[dict] = []
        self._next_eval = 0.0
        self._t_fit = 0.0
        self._sample_rate = 16000

    # ------------------------------------------------------------------------------------------- Lightning
    def on_fit_start(self, trainer, pl_module):
        if trainer.world_size > 1:
            raise RuntimeError("DevCurve supports a single process (trainer.devices=1)")
        self._t_fit = time.monotonic()
        self._sample_rate = pl_module.dims.sample_rate
        from speech_ed.evaluation.evaluate import batches_by_duration

        dataset = AEDDataset(self.tokenizer, pnc=self.pnc, sample_rate=self._sample_rate)
        self._loss_batches = [dataset[b] for b in batches_by_duration(self.cuts, self.batch_size, 600.0)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.points:  # the starting point, before the first step
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(batch)
        train_s = pl_module.training_seconds()
        if train_s >= self._next_eval:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.train_seconds = pl_module.training_seconds()
        timer = _timer(trainer)
        if timer is not None:
            self.timer_seconds = timer.time_elapsed("train")
        if not self.points or self.points[-1]["step"] != trainer.global_step:
            self._evaluate(trainer, pl_module)
        self.wall_seconds = time.monotonic() - self._t_fit

    # ---------------------------------------------------------------------------------------------- pieces
    def _record(self, batch: dict) -> None:
        b = batch["audio"].shape[0]
        if b == 0:
            return
        self.steps += 1
        t = self.totals
        t["cuts"] += b
        t["real_samples"] += int(batch["audio_lens"].sum())
        t["padded_samples"] += int(batch["audio"].numel())
        t["real_tokens"] += int(batch["token_lens"].sum())
        t["padded_tokens"] += int(batch["tokens"].numel())
        shape = (b, batch["audio"].shape[1] / self._sample_rate, int(batch["tokens"].shape[1]))
        self.largest_batches = sorted(self.largest_batches + [shape], key=lambda s: -s[0] * s[1])
        del self.largest_batches[LARGEST_BATCHES_KEPT:]

    def _evaluate(self, trainer, pl_module) -> None:
        train_s = pl_module.training_seconds()
        t0 = time.monotonic()
        point = {"step": trainer.global_step, "train_s": round(train_s, 3), **self.measure(pl_module.model)}
        dt = time.monotonic() - t0
        point["eval_s"] = round(dt, 3)
        self.points.append(point)
        self.eval_seconds += dt
        self._pause(trainer, pl_module, dt)
        self._next_eval = (math.floor(train_s / self.every_s) + 1) * self.every_s if self.every_s else 0.0
        print(f"  step {point['step']:>6}  train {train_s:8.1f} s  dev WER {point['dev_wer']}  "
              f"dev loss {point['dev_loss']:.3f}  (eval {dt:.1f} s, not counted)", flush=True)

    @staticmethod
    def _pause(trainer, pl_module, seconds: float) -> None:
        """Move every training clock forward by ``seconds``."""
        pl_module.pause_clock(seconds)
        from speech_ed.training.callbacks import ThroughputLogger

        for cb in trainer.callbacks:
            if isinstance(cb, ThroughputLogger):
                cb.pause(seconds)
        timer = _timer(trainer)
        if timer is not None:
            from lightning.pytorch.trainer.states import RunningStage

            # Lightning's Timer has no pause; moving its start is the same as not counting the interval.
            start = timer._start_time.get(RunningStage.TRAINING)
            if start is not None:
                timer._start_time[RunningStage.TRAINING] = start + seconds

    @torch.no_grad()
    def measure(self, model) -> dict:
        """Greedy dev WER (attention and CTC, percent) and teacher-forced dev loss of ``model``."""
        from speech_ed.evaluation.evaluate import transcribe_cuts, wer_table
        from speech_ed.models import compute_loss

        was_training = model.training
        model.eval()
        try:
            out = transcribe_cuts(model, self.tokenizer, self.cuts, batch_size=self.batch_size,
                                  max_len_ratio=self.max_len_ratio, pnc=self.pnc, dtype=self.dtype)
            wer = wer_table(out["rows"])
            wer_ctc = wer_table(out["rows"], key="hyp_ctc")
            device = next(model.parameters()).device
            autocast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None
                        else contextlib.nullcontext())
            total, n = 0.0, 0
            for batch in self._loss_batches:
                if not batch["cut_ids"]:
                    continue
                b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                tokens_in, targets = split_decoder_io(b["tokens"], b["token_lens"])
                with autocast:
                    outputs = model(b["audio"], b["audio_lens"], tokens_in)
                    loss, _ = compute_loss(outputs, targets, b["ctc_targets"], b["ctc_target_lens"],
                                           label_smoothing=0.0, ctc_weight=self.ctc_weight)
                total += float(loss) * len(b["cut_ids"])
                n += len(b["cut_ids"])
        finally:
            model.train(was_training)
        return {"dev_wer": wer.get("overall"), "dev_wer_macro": wer.get("macro"),
                "dev_wer_ctc": wer_ctc.get("overall"), "dev_loss": round(total / max(n, 1), 4),
                "dev_utterances": len(out["rows"])}

    def summary(self) -> dict:
        """What one strategy's run measured (training time excludes every evaluation)."""
        t, train_s = self.totals, max(self.train_seconds, 1e-9)
        audio_s = t["real_samples"] / self._sample_rate
        return {
            "steps": self.steps,
            "mean_batch_size": t["cuts"] / self.steps if self.steps else 0.0,
            "input_padding": 1 - t["real_samples"] / t["padded_samples"] if t["padded_samples"] else 0.0,
            "output_padding": 1 - t["real_tokens"] / t["padded_tokens"] if t["padded_tokens"] else 0.0,
            "audio_seconds": audio_s,
            "audio_seconds_per_second": audio_s / train_s,
            "train_seconds": self.train_seconds,
            "timer_seconds": self.timer_seconds,
            "eval_seconds": self.eval_seconds,
            "wall_seconds": self.wall_seconds,
            "largest_batches": [list(s) for s in self.largest_batches],
        }


def _timer(trainer):
    from lightning.pytorch.callbacks import Timer

    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
