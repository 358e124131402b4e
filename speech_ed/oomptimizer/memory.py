"""Two ways to know the peak memory of a training step without a GPU.

* :func:`allocator_peak_bytes` (the ``cpu`` probe): every allocation and free that torch's CPU allocator
  makes while the step runs, taken from the profiler's memory events. This sees kernel-internal scratch
  buffers, autograd's buffers and the optimizer's temporaries, so it is the CPU twin of
  ``torch.cuda.max_memory_allocated``: the answer to "does this step fit in G GiB of tensor memory".
  (The process's resident-set high-water mark would also count the interpreter and libraries, about 0.4 GiB
  that no batch size changes, and glibc's retained arenas; it answers a different question.)
* :class:`StorageTracker` (the ``simulate`` probe): a dispatch mode that adds the bytes of every tensor
  storage an operator creates and subtracts them when the storage is freed (a weak reference to the storage
  notices). Under ``FakeTensorMode`` nothing is allocated, so a laptop can trace the step of a model and batch
  that need 80 GB. It sees only storages that operators return; scratch memory inside kernels is added by a
  ``workspace`` function where one is known (:mod:`speech_ed.oomptimizer.cuda_model`).

Shapes: B batch, T frames, V vocabulary, N CTC target tokens.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# CTC's forward output shape depends on the longest target, which a fake tensor cannot read; these operators
# get their shapes from the padded target tensor instead (the worst case: every target full length).
_CTC_FORWARD = (aten._ctc_loss.Tensor, aten._ctc_loss.default)
_CTC_BACKWARD = (aten._ctc_loss_backward.Tensor, aten._ctc_loss_backward.default)
DATA_DEPENDENT_FLOAT = 1.0
"""What a fake float scalar reads as (``float(loss)`` for logging, Adam's step count): never a shape."""


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared parameters counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


class MemoryBudgetExceeded(RuntimeError):
    """Raised by a :class:`StorageTracker` with a limit: the CPU's stand-in for a CUDA out-of-memory error."""


class StorageTracker(TorchDispatchMode):
    """Live and peak bytes of tensor storages created while the mode is active.

    Enter it *inside* ``FakeTensorMode`` to trace a step without memory (``fake=True`` also supplies CTC
    output shapes and lets float ``.item()`` calls read :data:`DATA_DEPENDENT_FLOAT`); or on real tensors to
    count what operators return, optionally stopping the step like an out-of-memory error once ``limit_bytes``
    is passed (what it counts is never more than what the allocator holds, so a stop is never a false alarm).

    Args:
        block_bytes: round every storage up to this many bytes (512 mimics the CUDA caching allocator).
        fake: running under ``FakeTensorMode``.
        limit_bytes: raise :class:`MemoryBudgetExceeded` as soon as the live bytes exceed this.
        workspace: ``workspace(func, args) -> bytes`` of scratch memory the operator's kernel holds while it
            runs (on top of its inputs and outputs); counted in the peak, never in ``live``.
        allocator: a :class:`~speech_ed.oomptimizer.allocator.CachingAllocatorModel` that every storage,
            scratch buffer and held workspace is also requested from (and returned to), in the order the step
            makes them, so that it can tell whether the step fits in reserved memory.
    """

    def __init__(self, block_bytes: int = 1, fake: bool = False, limit_bytes: Optional[int] = None,
                 workspace: Optional[Callable] = None, allocator=None):
        super().__init__()
        self.allocator = allocator
        self.block_bytes = max(int(block_bytes), 1)
        self.fake = fake
        self.limit_bytes = limit_bytes
        self.workspace = workspace
        self.live = 0
        self.peak = 0
        self.workspace_peak = 0
        """Largest single scratch buffer counted."""
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _size(self, nbytes: int) -> int:
        b = self.block_bytes
        return -(-nbytes // b) * b

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count already-existing tensors (parameters, optimizer state) as live until they are freed."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())

    def start_from(self, resident: "StorageTracker") -> None:
        """Start from what ``resident`` tracks (parameters, optimizer state: live, and already in the
        allocator model), without counting or allocating it again when an in-place operator returns it."""
        self.live = self.peak = resident.live
        for st in resident._seen.keys():
            self._seen[st] = None

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` held outside any tensor (a library's workspace) as live from now on."""
        self.live += self._size(nbytes)
        self.peak = max(self.peak, self.live)
        if self.allocator is not None:
            self.allocator.malloc(self._size(nbytes))

    def reset_peak(self) -> None:
        self.peak = self.live

    def _add(self, st: torch.UntypedStorage) -> None:
        if st in self._seen:
            return
        n = self._size(st.nbytes())
        block = self.allocator.malloc(n) if self.allocator is not None else None

        def freed(_ref, n=n, block=block):
            self.live -= n
            if block is not None:
                self.allocator.free(block)

        self._seen[st] = weakref.ref(st, freed)
        self.live += n
        if self.live > self.peak:
            self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.fake and func in _CTC_FORWARD:
            log_probs, targets = args[0], args[1]  # (T, B, V), (B, N)
            t, b, _ = log_probs.shape
            n = targets.shape[1] if targets.dim() == 2 else targets.shape[0]
            out = (log_probs.new_empty((b,)), log_probs.new_empty((b, t, 2 * n + 1)))
        elif self.fake and func in _CTC_BACKWARD:
            out = torch.empty_like(args[1])
        elif self.fake and func is aten._local_scalar_dense.default:
            try:
                return func(*args, **kwargs)  # constants (Adam's step counter) still have a value
            except Exception:
                if args[0].dtype.is_floating_point:
                    return DATA_DEPENDENT_FLOAT
                raise RuntimeError(
                    "simulate probe: the model reads an integer or boolean tensor value (.item(), int(), if "
                    "tensor: ...), which a fake tensor does not have; use the cpu or cuda probe") from None
        else:
            out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())
        scratch = self._size(self.workspace(func, args)) if self.workspace is not None else 0
        if scratch:
            self.workspace_peak = max(self.workspace_peak, scratch)
            self.peak = max(self.peak, self.live + scratch)
            if self.allocator is not None:
                self.allocator.free(self.allocator.malloc(scratch))
        if self.limit_bytes is not None and self.live > self.limit_bytes:
            raise MemoryBudgetExceeded(f"{self.live / 2**30:.3f} GiB live after {func}, over the limit of "
                                       f"{self.limit_bytes / 2**30:.3f} GiB")
        return out


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the C++ profiler's start/stop lines on file descriptor 2 (Python errors are unaffected)."""
    fd = 2
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def allocator_peak_bytes(fn: Callable[[], None]) -> tuple[int, int]:
    """Run ``fn`` and return (peak, final) change of the bytes held by torch's CPU allocator.

    Both are relative to the start: add the bytes already live (parameters, optimizer state) for the
    absolute peak. Allocations made by any thread are counted.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        if live > peak:
            peak = live
    return peak, live
