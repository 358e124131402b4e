"""The ``simulate`` probe: the training step traced with fake tensors, so nothing is allocated.

Batch sizes for an 80 GB GPU can be planned on a laptop. For a GPU target (``gpu_like``) the trace follows
CUDA rather than the CPU it runs on (:mod:`speech_ed.oomptimizer.cuda_model`: fused attention, CUDA autocast
and dropout, kernel and cuBLAS workspaces), and every allocation is replayed through a model of the CUDA
caching allocator (:mod:`speech_ed.oomptimizer.allocator`), so "fits" means what it means on the GPU: the
allocator never has to reserve more than the limit. Each term, and what is left out, is explained in
docs/OOMPTIMIZER.md with the H100 measurements it was checked against.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from speech_ed.models import AEDModel, ModelDims
from speech_ed.oomptimizer.allocator import CachingAllocatorModel, SimulatedOutOfMemory
from speech_ed.oomptimizer.cuda_model import (
    DEFAULT_CAPABILITY,
    Capability,
    CudaSemantics,
    GpuModel,
    cublas_workspace_bytes,
    kernel_workspace_bytes,
)
from speech_ed.oomptimizer.memory import StorageTracker
from speech_ed.oomptimizer.step import StepSettings, TrainingStep
from speech_ed.oomptimizer.trial import GiB, Probe, TrialResult


def build_fake_model(dims: ModelDims, fake_mode) -> AEDModel:
    """An :class:`AEDModel` whose parameters and buffers are fake CPU tensors of ``fake_mode``.

    The model is built on the meta device (so whatever its constructor does, such as changing memory formats,
    works), then every tensor is replaced by a fake one with the same size, strides and dtype; tied parameters
    stay tied. A constructor that reads a tensor's value (which a meta tensor does not have) is run once for
    real on the CPU instead: slower and using the model's memory for a moment, but the shapes are exact.
    """
    try:
        with torch.device("meta"):
            model = AEDModel(dims)
    except (RuntimeError, NotImplementedError):
        model = AEDModel(dims)
    made: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            with fake_mode:
                new = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")
            is_param = isinstance(t, nn.Parameter)
            made[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if is_param else new
        return made[id(t)]

    for m in model.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = fake_like(p)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = fake_like(b)
    return model


class SimulateProbe(Probe):
    """The step traced with fake tensors; see the module docstring.

    Without ``gpu_like`` a trial fits when the peak of the tensors alive, traced with CPU semantics, is at
    most the limit. With it, the trace follows :class:`~speech_ed.oomptimizer.cuda_model.GpuModel` and a trial
    replays every allocation and free through a
    :class:`~speech_ed.oomptimizer.allocator.CachingAllocatorModel` set up as the cuda probe sets up the GPU
    (the model and its copy moved tensor by tensor, then the optimizer's first step) and, like the GPU's in
    the cuda probe, never emptied between trials: a trial fits when the allocator never needs to reserve more
    than the limit.

    Args:
        dims: model dimensions (vocab size filled in).
        settings: step settings.
        limit_bytes: the memory the batch must fit in.
        gpu_like: trace for a CUDA target (also: 'auto' attention becomes SDPA, AdamW is multi-tensor).
        device_name: label for reports.
        capability: CUDA compute capability of the target (default sm90).
        gpu_model: which terms of the CUDA model apply (default: all; ``GpuModel.none()`` is the trace of
            session 2: CPU attention, autocast and dropout, tensors alive <= limit).
    """

    name = "simulate"

    def __init__(self, dims: ModelDims, settings: StepSettings, limit_bytes: int, gpu_like: bool = False,
                 device_name: str = "simulated cpu", capability: Optional[Capability] = None,
                 gpu_model: Optional[GpuModel] = None):
        from torch._subclasses.fake_tensor import FakeTensorMode

        super().__init__(limit_bytes, device_name)
        self.gpu_like = gpu_like
        self.capability = capability or DEFAULT_CAPABILITY
        self.gpu_model = (gpu_model or GpuModel()) if gpu_like else GpuModel.none()
        self.last_sdpa_backends: dict[str, int] = {}
        """Attention calls per backend in the last trace (``gpu_like``)."""
        if gpu_like and dims.attention_impl == "auto":
            dims = replace(dims, attention_impl="sdpa")  # what 'auto' picks on CUDA
        self.fake_mode = FakeTensorMode()
        model = build_fake_model(dims, self.fake_mode)
        replica = build_fake_model(dims, self.fake_mode) if settings.ddp_copy else None
        g = self.gpu_model
        self.allocator: Optional[CachingAllocatorModel] = None
        with self.fake_mode:
            self.step = TrainingStep(model, settings, replica, foreach=gpu_like)
            self._resident = StorageTracker(block_bytes=512 if gpu_like else 1, fake=True)
            if g.allocator:
                self.allocator = CachingAllocatorModel(limit_bytes)  # strict only in trials
                self._resident.allocator = self.allocator
            for m in (model, replica):  # in the order the cuda probe moves them to the GPU
                if m is not None:
                    self._resident.track(list(m.parameters()) + list(m.buffers()))
            with self._resident:
                self.step.init_optimizer_state()
            if g.cublas_workspaces:
                self._resident.hold(cublas_workspace_bytes(self.capability))
        if self.allocator is not None:
            self.allocator.strict = True
        self._initial_allocator = self.allocator.clone() if self.allocator is not None else None

    def _trace(self, batch_size: int, max_duration_s: float, max_tokens: int,
               allocator: Optional[CachingAllocatorModel]) -> StorageTracker:
        g = self.gpu_model
        tracker = StorageTracker(block_bytes=self._resident.block_bytes, fake=True, allocator=allocator,
                                 workspace=kernel_workspace_bytes if g.kernel_workspaces else None)
        semantics = CudaSemantics(self.capability, g.fused_attention, g.cuda_autocast, g.cuda_dropout) \
            if self.gpu_like else contextlib.nullcontext()
        with self.fake_mode:
            tracker.start_from(self._resident)
            with tracker, semantics:
                self.step(self.step.make_batch(batch_size, max_duration_s, max_tokens))
        if self.gpu_like:
            self.last_sdpa_backends = dict(semantics.sdpa_backends)
        return tracker

    def peak_bytes(self, batch_size: int, max_duration_s: float, max_tokens: int) -> int:
        """Peak bytes of the tensors alive in the step (``torch.cuda.max_memory_allocated``'s analogue);
        the allocator model is not involved."""
        return self._trace(batch_size, max_duration_s, max_tokens, None).peak

    def replay(self, batch_size: int, max_duration_s: float, max_tokens: int, fresh: bool = False,
               to_end: bool = False) -> tuple[bool, int, int]:
        """The step through the allocator model (needs ``gpu_model.allocator``).

        Args:
            fresh: start from the state right after set-up, not from the cache earlier trials left (which
                stays as it is); the answer then does not depend on what was traced before.
            to_end: with ``fresh``, do not stop at the first request that cannot be reserved: reserve past the
                limit and run the step to its end, so both peaks are those of the whole step (the verdict is
                the same: it fits exactly when the reserved peak is at most the limit).

        Returns:
            (fits, peak allocated bytes, peak reserved bytes), up to the end of the step or up to the first
            request that could not be reserved.
        """
        if self.allocator is None:
            raise ValueError("replay needs the allocator model (GpuModel.allocator)")
        if to_end and not fresh:
            raise ValueError("replay(to_end=True) needs fresh=True (it must not leave a state past the "
                             "limit)")
        if fresh or not self.gpu_model.keep_cache:
            allocator = self._initial_allocator.clone()
            allocator.strict = not to_end
            if not fresh:
                self.allocator = allocator
        else:
            allocator = self.allocator
        allocator.reset_peaks()
        allocator.out_of_memory = False
        try:
            self._trace(batch_size, max_duration_s, max_tokens, allocator)
        except SimulatedOutOfMemory:
            pass
        return not allocator.out_of_memory, allocator.peak_allocated, allocator.peak_reserved

    def fits(self, batch_size: int, max_duration_s: float, max_tokens: int) -> bool:
        """Whether the batch fits, judged from the state after set-up (the same answer whatever was asked
        before; what benchmarks comparing batching strategies under one memory limit use)."""
        if self.allocator is None:
            return self.peak_bytes(batch_size, max_duration_s, max_tokens) <= self.limit_bytes
        return self.replay(batch_size, max_duration_s, max_tokens, fresh=True)[0]

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        t0 = time.perf_counter()
        if self.allocator is None:
            peak = self.peak_bytes(batch_size, max_duration_s, max_tokens)
            return TrialResult(batch_size, peak <= self.limit_bytes, peak, time.perf_counter() - t0)
        fits, allocated, reserved = self.replay(batch_size, max_duration_s, max_tokens)
        note = f"reserved {reserved / GiB:.2f} GiB" if fits else "allocator model: out of memory"
        return TrialResult(batch_size, fits, allocated if fits else None, time.perf_counter() - t0, note)
