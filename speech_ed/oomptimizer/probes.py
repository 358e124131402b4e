"""Memory probes: run one training step on a worst-case batch and say whether it fits.

* ``cuda``: the real thing. The step runs on the GPU under ``set_per_process_memory_fraction`` with a second
  model copy resident (data-parallel overhead); a ``torch.cuda.OutOfMemoryError`` (or a cuFFT/cuBLAS
  allocation failure) means "does not fit". The cache is never emptied between trials: fragmentation is real
  in training too.
* ``cpu``: the step runs on the CPU and the peak bytes held by torch's allocator during the step (plus what
  was resident before it) are compared with the budget (see :mod:`speech_ed.oomptimizer.memory`).
* ``simulate``: the step is traced with fake tensors; a storage tracker estimates its peak. Nothing is
  allocated, so batch sizes for an 80 GB GPU can be planned on a laptop. For a GPU target the model is traced
  with the choices it makes on CUDA (fused attention where ``attention_impl`` is 'auto', multi-tensor AdamW,
  512-byte allocation granularity); cuDNN/cuBLAS workspaces and fragmentation are not modelled, which is
  what the memory fraction and the safety margin are for.

Every probe offers ``trial(batch_size, max_duration_s, max_tokens) -> TrialResult``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn

from speech_ed.models import AEDModel, ModelDims
from speech_ed.oomptimizer.memory import (MemoryBudgetExceeded, StorageTracker, allocator_peak_bytes,
                                          storage_bytes)
from speech_ed.oomptimizer.step import StepSettings, TrainingStep, build_training_step

GiB = 1 << 30
PROBES = ("cuda", "cpu", "simulate")
# Approximate memory torch reports for common GPUs (GiB); pass --memory-budget-gib for an exact figure.
GPU_MEMORY_GIB = {
    "a100-40gb": 39.4,
    "a100-80gb": 79.2,
    "h100-80gb": 79.1,
    "h200-141gb": 139.8,
    "l4-24gb": 22.0,
    "rtx4090-24gb": 23.6,
}
# Errors that mean "out of memory" even though they are not OutOfMemoryError (NeMo treats cuFFT's the same).
_OOM_MARKERS = ("out of memory", "CUFFT_INTERNAL_ERROR", "CUBLAS_STATUS_ALLOC_FAILED")


@dataclass
class TrialResult:
    """One trial of a probe."""

    batch_size: int
    fits: bool
    peak_bytes: Optional[int]
    """Peak memory of the step (None when the step was stopped by running out of memory)."""
    seconds: float
    note: str = ""


class Probe:
    """Common interface; see the module docstring."""

    name = "probe"

    def __init__(self, limit_bytes: int, device_name: str):
        self.limit_bytes = int(limit_bytes)
        self.device_name = device_name

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"probe": self.name, "device": self.device_name, "limit_gib": round(self.limit_bytes / GiB, 4)}


def build_fake_model(dims: ModelDims, fake_mode) -> AEDModel:
    """An :class:`AEDModel` whose parameters and buffers are fake CPU tensors of ``fake_mode``.

    The model is built on the meta device (so whatever its constructor does, such as changing memory formats,
    works), then every tensor is replaced by a fake one with the same size, strides and dtype; tied parameters
    stay tied.
    """
    with torch.device("meta"):
        model = AEDModel(dims)
    made: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in made:
            with fake_mode:
                new = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="cpu")
            made[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
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
    """Peak memory of the step traced with fake tensors.

    Args:
        dims: model dimensions (vocab size filled in).
        settings: step settings.
        limit_bytes: the memory the batch must fit in.
        gpu_like: trace with the choices the model and optimizer make on CUDA (see the module docstring).
        device_name: label for reports.
    """

    name = "simulate"

    def __init__(self, dims: ModelDims, settings: StepSettings, limit_bytes: int, gpu_like: bool = False,
                 device_name: str = "simulated cpu"):
        from torch._subclasses.fake_tensor import FakeTensorMode

        super().__init__(limit_bytes, device_name)
        self.gpu_like = gpu_like
        if gpu_like and dims.attention_impl == "auto":
            dims = replace(dims, attention_impl="sdpa")  # what 'auto' picks on CUDA
        self.fake_mode = FakeTensorMode()
        model = build_fake_model(dims, self.fake_mode)
        replica = build_fake_model(dims, self.fake_mode) if settings.ddp_copy else None
        with self.fake_mode:
            self.step = TrainingStep(model, settings, replica, foreach=gpu_like)
            self.step.init_optimizer_state()

    def peak_bytes(self, batch_size: int, max_duration_s: float, max_tokens: int) -> int:
        tracker = StorageTracker(block_bytes=512 if self.gpu_like else 1, fake=True)
        with self.fake_mode:
            tracker.track(self.step.resident_tensors())
            with tracker:
                self.step(self.step.make_batch(batch_size, max_duration_s, max_tokens))
        return tracker.peak

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        t0 = time.perf_counter()
        peak = self.peak_bytes(batch_size, max_duration_s, max_tokens)
        return TrialResult(batch_size, peak <= self.limit_bytes, peak, time.perf_counter() - t0)


class CpuProbe(Probe):
    """Measured peak of the step on the CPU against a memory budget.

    A trial stops early, like a GPU running out of memory, as soon as the tensors alive exceed the budget
    (a :class:`~speech_ed.oomptimizer.memory.StorageTracker` with a limit watches); a trial that completes is
    judged by the allocator's peak.

    Args:
        dims, settings, limit_bytes: as for :class:`SimulateProbe`.
        preflight_factor: before the first trial of each bucket (the one that may be far too large), trace it
            with fake tensors and skip it as "does not fit" when the estimate exceeds this multiple of the
            budget, so a bad start never exhausts the machine's RAM. None disables it.
        stop_over_budget: stop failing trials early (False: run every step to the end and measure it).
    """

    name = "cpu"

    def __init__(self, dims: ModelDims, settings: StepSettings, limit_bytes: int,
                 preflight_factor: Optional[float] = 2.0, stop_over_budget: bool = True):
        super().__init__(limit_bytes, f"cpu ({platform.processor() or platform.machine()})")
        self.stop_over_budget = stop_over_budget
        self.step = build_training_step(dims, settings, "cpu")
        self.resident_bytes = storage_bytes(self.step.resident_tensors())
        self.preflight = SimulateProbe(dims, settings, limit_bytes) if preflight_factor else None
        self.preflight_factor = preflight_factor
        self._last_bucket: Optional[tuple[float, int]] = None

    def measure(self, batch_size: int, max_duration_s: float, max_tokens: int,
                stop_at: Optional[int] = None) -> int:
        """Absolute peak bytes (resident + the step's allocations, batch included).

        Raises:
            MemoryBudgetExceeded: with ``stop_at``, once the live tensors exceed it.
        """

        def run():
            self.step(self.step.make_batch(batch_size, max_duration_s, max_tokens))

        if stop_at is None:
            peak, _ = allocator_peak_bytes(run)
        else:
            tracker = StorageTracker(limit_bytes=stop_at)
            tracker.track(self.step.resident_tensors())

            def run_tracked():
                with tracker:
                    run()

            peak, _ = allocator_peak_bytes(run_tracked)
        return self.resident_bytes + peak

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        t0 = time.perf_counter()
        bucket = (max_duration_s, max_tokens)
        if self.preflight is not None and bucket != self._last_bucket:
            self._last_bucket = bucket
            est = self.preflight.peak_bytes(batch_size, max_duration_s, max_tokens)
            if est > self.preflight_factor * self.limit_bytes:
                return TrialResult(batch_size, False, est, time.perf_counter() - t0,
                                   note=f"skipped: simulated peak over {self.preflight_factor}x the budget")
        try:
            peak = self.measure(batch_size, max_duration_s, max_tokens,
                                stop_at=self.limit_bytes if self.stop_over_budget else None)
        except MemoryBudgetExceeded as err:
            return TrialResult(batch_size, False, None, time.perf_counter() - t0, note=f"stopped: {err}")
        return TrialResult(batch_size, peak <= self.limit_bytes, peak, time.perf_counter() - t0)


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA out-of-memory errors, including cuFFT/cuBLAS allocation failures."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MARKERS)


class CudaProbe(Probe):
    """Real out-of-memory detection on a GPU.

    Args:
        dims, settings: as for :class:`SimulateProbe`.
        memory_fraction: share of the GPU's memory the process may use (``set_per_process_memory_fraction``).
        memory_budget_gib: optional cap in GiB before the fraction is applied (default: the whole GPU).
        device: CUDA device.
    """

    name = "cuda"

    def __init__(self, dims: ModelDims, settings: StepSettings, memory_fraction: float = 0.9,
                 memory_budget_gib: Optional[float] = None, device: str = "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--probe cuda needs a CUDA GPU; use --probe simulate --target-gpu NAME to "
                               "plan for a GPU you do not have, or --probe cpu")
        self.device = torch.device(device)
        if self.device.index is None:  # set_per_process_memory_fraction needs an explicit index
            self.device = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(self.device).total_memory
        budget = total if memory_budget_gib is None else min(total, int(memory_budget_gib * GiB))
        limit = int(budget * memory_fraction)
        super().__init__(limit, torch.cuda.get_device_name(self.device))
        self.total_bytes = total
        torch.cuda.set_per_process_memory_fraction(limit / total, self.device)
        self.step = build_training_step(dims, settings, self.device)

    def trial(self, batch_size: int, max_duration_s: float, max_tokens: int) -> TrialResult:
        t0 = time.perf_counter()
        torch.cuda.reset_peak_memory_stats(self.device)  # no empty_cache(): keep training's fragmentation
        fits, note = True, ""
        try:
            self.step(self.step.make_batch(batch_size, max_duration_s, max_tokens))
            torch.cuda.synchronize(self.device)
        except RuntimeError as err:  # OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
                raise
            fits, note = False, str(err).splitlines()[0][:120]
        # The failed step's tensors are released with the exception object, at the end of the except block.
        peak = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        note = note or f"reserved {reserved / GiB:.2f} GiB"
        return TrialResult(batch_size, fits, peak if fits else None, time.perf_counter() - t0, note)

    def describe(self) -> dict:
        return {**super().describe(), "total_gib": round(self.total_bytes / GiB, 3)}


def make_probe(kind: str, dims: ModelDims, settings: StepSettings, memory_budget_gib: Optional[float] = None,
               memory_fraction: float = 0.9, target_gpu: Optional[str] = None) -> Probe:
    """Build a probe from command-line choices.

    The limit is ``memory_budget_gib x memory_fraction``. ``cuda`` defaults the budget to the GPU's memory;
    ``simulate`` takes it from ``target_gpu`` (a key of :data:`GPU_MEMORY_GIB`) unless given; ``cpu`` needs
    it.

    Raises:
        ValueError: unknown probe or GPU name, missing budget, fraction outside (0, 1].
    """
    if kind not in PROBES:
        raise ValueError(f"--probe {kind!r}: choose one of {PROBES}")
    if not 0.0 < memory_fraction <= 1.0:
        raise ValueError(f"--memory-fraction must be in (0, 1], got {memory_fraction}")
    if target_gpu is not None and target_gpu not in GPU_MEMORY_GIB:
        raise ValueError(f"--target-gpu {target_gpu!r}: choose one of {sorted(GPU_MEMORY_GIB)} "
                         "(or give --memory-budget-gib)")
    if kind == "cuda":
        return CudaProbe(dims, settings, memory_fraction, memory_budget_gib)
    if memory_budget_gib is None:
        if kind == "simulate" and target_gpu is not None:
            memory_budget_gib = GPU_MEMORY_GIB[target_gpu]
        else:
            raise ValueError(f"--probe {kind} needs --memory-budget-gib"
                             + (" or --target-gpu" if kind == "simulate" else ""))
    if memory_budget_gib <= 0:
        raise ValueError(f"--memory-budget-gib must be > 0, got {memory_budget_gib}")
    limit = int(memory_budget_gib * memory_fraction * GiB)
    if kind == "cpu":
        return CpuProbe(dims, settings, limit)
    name = f"simulated {target_gpu} ({memory_budget_gib:g} GiB)" if target_gpu else \
        f"simulated cpu ({memory_budget_gib:g} GiB)"
    return SimulateProbe(dims, settings, limit, gpu_like=target_gpu is not None, device_name=name)
