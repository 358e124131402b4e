"""Memory probes: run one training step on a worst-case batch and say whether it fits.

* ``cuda``: the real thing. The step runs on the GPU under ``set_per_process_memory_fraction`` with a second
  model copy resident (data-parallel overhead); a ``torch.cuda.OutOfMemoryError`` (or a cuFFT/cuBLAS
  allocation failure) means "does not fit". The cache is never emptied between trials: fragmentation is real
  in training too.
* ``cpu``: the step runs on the CPU and the peak bytes held by torch's allocator during the step (plus what
  was resident before it) are compared with the budget (see :mod:`speech_ed.oomptimizer.memory`).
* ``simulate``: the step is traced with fake tensors (:mod:`speech_ed.oomptimizer.simulate`). Nothing is
  allocated, so batch sizes for an 80 GB GPU can be planned on a laptop. For a GPU target the trace follows
  CUDA (fused attention, CUDA autocast and dropout, workspaces) and its allocations are replayed through a
  model of the CUDA caching allocator, so fragmentation is counted too (docs/OOMPTIMIZER.md).

Every probe offers ``trial(batch_size, max_duration_s, max_tokens) -> TrialResult``.
"""

from __future__ import annotations

import platform
import time
from typing import Optional

import torch

from speech_ed.models import ModelDims
from speech_ed.oomptimizer.cuda_model import GPU_COMPUTE_CAPABILITY
from speech_ed.oomptimizer.memory import (
    MemoryBudgetExceeded,
    StorageTracker,
    allocator_peak_bytes,
    storage_bytes,
)
from speech_ed.oomptimizer.simulate import SimulateProbe, build_fake_model
from speech_ed.oomptimizer.step import StepSettings, build_training_step
from speech_ed.oomptimizer.trial import GiB, Probe, TrialResult

__all__ = ["GPU_MEMORY_GIB", "PROBES", "CpuProbe", "CudaProbe", "GiB", "Probe", "SimulateProbe",
           "TrialResult", "build_fake_model", "is_out_of_memory", "make_probe", "resolve_probe"]
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


def resolve_probe(probe: str, accelerator: str = "auto", target_gpu: Optional[str] = None) -> str:
    """The one meaning of ``probe='auto'``: probe the device the batch sizes are for.

    That is ``cuda`` when training will run on a visible CUDA GPU (one is visible and ``accelerator``, the
    trainer's, is not 'cpu'): the real step, nothing to estimate. Otherwise ``simulate`` when a target GPU is
    named (``oomptimize.target_gpu``: the batch sizes are for that GPU, planned here), else ``cpu`` (training
    runs on this CPU; the cpu probe measures it under the memory budget given). Any other value is returned
    as it is.
    """
    if probe != "auto":
        return probe
    import torch

    if torch.cuda.is_available() and accelerator != "cpu":
        return "cuda"
    return "simulate" if target_gpu else "cpu"


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
    capability = GPU_COMPUTE_CAPABILITY.get(target_gpu) if target_gpu else None
    return SimulateProbe(dims, settings, limit, gpu_like=target_gpu is not None, device_name=name,
                         capability=capability)
