"""One full training step, exactly as training runs it, for the memory probes to measure.

AdamW (betas and weight decay from the config) + forward + :func:`speech_ed.models.compute_loss` + backward
+ gradient clipping + ``optimizer.step()``, under ``torch.autocast`` for the mixed precisions. Gradients are
set to ``None`` after each step, as Lightning does, so a trial starts with the memory training starts a step
with: parameters, optimizer state and (optionally) a second model copy standing in for data-parallel buffers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from speech_ed.models import AEDModel, ModelDims, compute_loss
from speech_ed.oomptimizer.batch import make_worst_case_batch

# trainer.precision -> (autocast dtype or None, parameter dtype)
PRECISIONS = {
    "bf16-mixed": (torch.bfloat16, torch.float32),
    "16-mixed": (torch.float16, torch.float32),
    "32-true": (None, torch.float32),
    "bf16-true": (None, torch.bfloat16),
}


@dataclass
class StepSettings:
    """What a training step needs besides the model (taken from the experiment config)."""

    precision: str = "bf16-mixed"
    """One of :data:`PRECISIONS` (``trainer.precision``)."""
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    grad_clip: float = 5.0
    """Gradient-norm clipping as in training (0 disables it)."""
    label_smoothing: float = 0.1
    ctc_weight: float = 0.3
    ddp_copy: bool = True
    """Keep a second copy of the model resident, standing in for data-parallel gradient buckets."""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {sorted(PRECISIONS)}")

    @classmethod
    def from_config(cls, cfg, ddp_copy: bool = True) -> "StepSettings":
        """Settings of an :class:`speech_ed.config.ExperimentConfig`."""
        return cls(precision=cfg.trainer.precision, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                   weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip,
                   label_smoothing=cfg.loss.label_smoothing, ctc_weight=cfg.loss.ctc_weight,
                   ddp_copy=ddp_copy)


def cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers (``module.to(dtype)`` cannot swap fake tensors)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_floating_point():
                m._parameters[name] = nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_floating_point():
                m._buffers[name] = b.to(dtype)


class TrainingStep:
    """A model, its optimizer and the step; call it with a batch from :func:`make_worst_case_batch`.

    Args:
        model: an :class:`AEDModel` (already on its device, in training mode after construction).
        settings: optimizer, loss and precision settings.
        replica: the extra resident model copy (None: none); built by the caller because a deep copy does not
            work for fake tensors.
        foreach: AdamW's ``foreach`` (None: torch's default for the device).
    """

    def __init__(self, model: AEDModel, settings: StepSettings, replica: Optional[nn.Module] = None,
                 foreach: Optional[bool] = None):
        self.model = model.train()
        self.settings = settings
        self.replica = replica
        self.autocast_dtype, param_dtype = PRECISIONS[settings.precision]
        if param_dtype != torch.float32:
            for m in (model, replica):
                if m is not None:
                    cast_floating(m, param_dtype)
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas,
                                           weight_decay=settings.weight_decay, foreach=foreach)

    def init_optimizer_state(self) -> None:
        """Create AdamW's moment buffers now (as after training's first step), with all-zero gradients."""
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def resident_tensors(self) -> list[torch.Tensor]:
        """Tensors alive between steps: parameters, buffers, optimizer state, the replica."""
        out = list(self.model.parameters()) + list(self.model.buffers())
        if self.replica is not None:
            out += list(self.replica.parameters()) + list(self.replica.buffers())
        for state in self.optimizer.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return out

    def make_batch(self, batch_size: int, max_duration_s: float, max_tokens: int) -> dict[str, torch.Tensor]:
        dims = self.model.dims
        return make_worst_case_batch(batch_size, max_duration_s, max_tokens, dims.vocab_size,
                                     dims.sample_rate, device=self.device)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        """One training step on ``batch``; gradients are freed at the end."""
        s = self.settings
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                out = self.model(batch["audio"], batch["audio_lens"], batch["tokens_in"])
                loss, _ = compute_loss(out, batch["targets"], batch["ctc_targets"], batch["ctc_target_lens"],
                                       label_smoothing=s.label_smoothing, ctc_weight=s.ctc_weight)
            del out
            loss.backward()
            del loss
            if s.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)


def build_training_step(dims: ModelDims, settings: StepSettings, device: str | torch.device = "cpu",
                        foreach: Optional[bool] = None, seed: int = 0) -> TrainingStep:
    """Build the model (and replica) on ``device`` and return a ready :class:`TrainingStep`."""
    torch.manual_seed(seed)
    model = AEDModel(dims).to(device)
    replica = copy.deepcopy(model) if settings.ddp_copy else None
    step = TrainingStep(model, settings, replica, foreach)
    step.init_optimizer_state()
    return step
