"""A replay of PyTorch's CUDA caching allocator, so the simulate probe knows when a step runs out of memory.

A GPU step fails when the allocator cannot *reserve* memory, not when the tensors alive exceed the limit: the
allocator carves tensors out of cached segments, and the free pieces left between live tensors (fragmentation)
count against ``set_per_process_memory_fraction`` too. On the H100 the real step ran out of memory with the
tensors alive 0.1-4.7 GiB below the 71.26 GiB limit (docs/OOMPTIMIZER.md). :class:`CachingAllocatorModel`
follows ``c10/cuda/CUDACachingAllocator.cpp`` with its default settings (no expandable segments, no
``max_split_size_mb``, no power-of-two rounding, one stream):

* requests are rounded up to 512 bytes; requests of at most 1 MiB come from the small pool, others from the
  large pool;
* a request takes the smallest free block of its pool that is large enough (best fit; ties by address);
  if that block is larger, it is split when the rest is at least 512 bytes (small pool) or more than 1 MiB
  (large pool), otherwise the whole block is handed out;
* with no block free, a new segment is reserved: 2 MiB for small requests, 20 MiB for requests below 10 MiB,
  otherwise the request rounded up to 2 MiB. If that would pass the limit, every cached segment that is
  entirely free is released and the reservation retried; if it still does not fit, the step is out of memory;
* a freed block merges with free neighbours of its segment.

Sizes only: nothing is allocated.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

from speech_ed.oomptimizer.memory import MemoryBudgetExceeded

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20
LARGE_BUFFER = 20 << 20


def round_size(nbytes: int) -> int:
    """The allocator's request size: at least 512 bytes, a multiple of 512."""
    return max(MIN_BLOCK, -(-nbytes // MIN_BLOCK) * MIN_BLOCK)


def segment_size(nbytes: int) -> int:
    """Bytes reserved for a new segment serving a (rounded) request of ``nbytes``."""
    if nbytes <= SMALL_SIZE:
        return SMALL_BUFFER
    if nbytes < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-nbytes // ROUND_LARGE) * ROUND_LARGE


@dataclass(eq=False)
class Block:
    """A piece of a segment, free or handed out."""

    segment: int
    offset: int
    size: int
    small: bool
    allocated: bool = False
    prev: Optional["Block"] = field(default=None, repr=False)
    next: Optional["Block"] = field(default=None, repr=False)

    def key(self) -> tuple[int, int, int]:
        return (self.size, self.segment, self.offset)


class SimulatedOutOfMemory(MemoryBudgetExceeded):
    """Raised by a strict :class:`CachingAllocatorModel`: the step would raise ``torch.OutOfMemoryError``."""


class CachingAllocatorModel:
    """Segments, blocks and the two pools of the CUDA caching allocator (see the module docstring).

    Args:
        limit_bytes: the most the allocator may reserve (``set_per_process_memory_fraction`` x total).
        strict: raise :class:`SimulatedOutOfMemory` when a request does not fit, as CUDA does (False: reserve
            past the limit, set ``out_of_memory`` and go on, so a trace can run to its end).
    """

    def __init__(self, limit_bytes: int, strict: bool = False):
        self.limit_bytes = int(limit_bytes)
        self.strict = strict
        self.reserved = 0
        self.allocated = 0
        self.peak_reserved = 0
        self.peak_allocated = 0
        self.out_of_memory = False
        """Set when a request could not be reserved within the limit (the model then reserves past it)."""
        self.segments: dict[int, int] = {}
        self._heads: dict[int, Block] = {}  # the block at offset 0 of each segment (merges keep it)
        self._next_segment = 0
        self._free: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}  # sorted keys per pool
        self._blocks: dict[tuple[int, int, int], Block] = {}

    def clone(self) -> "CachingAllocatorModel":
        """An independent copy of the state (blocks handed out stay handed out in the copy)."""
        new = CachingAllocatorModel(self.limit_bytes, self.strict)
        for name in ("reserved", "allocated", "peak_reserved", "peak_allocated", "out_of_memory",
                     "_next_segment"):
            setattr(new, name, getattr(self, name))
        new.segments = dict(self.segments)
        for seg, head in self._heads.items():
            prev = None
            block = head
            while block is not None:
                copy = Block(block.segment, block.offset, block.size, block.small, block.allocated, prev=prev)
                if prev is None:
                    new._heads[seg] = copy
                else:
                    prev.next = copy
                if not copy.allocated:
                    new._insert(copy)
                prev, block = copy, block.next
        return new

    def reset_peaks(self) -> None:
        self.peak_reserved, self.peak_allocated = self.reserved, self.allocated

    def _insert(self, block: Block) -> None:
        key = block.key()
        bisect.insort(self._free[block.small], key)
        self._blocks[key] = block

    def _remove(self, block: Block) -> None:
        key = block.key()
        pool = self._free[block.small]
        i = bisect.bisect_left(pool, key)
        del pool[i]
        del self._blocks[key]

    def _new_segment(self, size: int, small: bool) -> Block:
        seg = self._next_segment
        self._next_segment += 1
        self.segments[seg] = size
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)
        self._heads[seg] = Block(seg, 0, size, small)
        return self._heads[seg]

    def _release_cached(self) -> None:
        """Give back every segment that is one free block (what the allocator does before an OOM)."""
        for small in (True, False):
            for key in [k for k in self._free[small] if self._blocks[k].prev is None
                        and self._blocks[k].next is None]:
                block = self._blocks[key]
                self._remove(block)
                self.reserved -= self.segments.pop(block.segment)
                del self._heads[block.segment]

    def malloc(self, nbytes: int) -> Optional[Block]:
        """Hand out a block for ``nbytes`` (None for 0 bytes, which CUDA does not allocate)."""
        if nbytes <= 0:
            return None
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):
            block = self._blocks[pool[i]]
            self._remove(block)
        else:
            seg_size = segment_size(size)
            if self.reserved + seg_size > self.limit_bytes:
                self._release_cached()
                if self.reserved + seg_size > self.limit_bytes:
                    self.out_of_memory = True
                    if self.strict:
                        raise SimulatedOutOfMemory(
                            f"cannot reserve {seg_size / 2**20:.0f} MiB for {size / 2**20:.1f} MiB: "
                            f"{self.reserved / 2**30:.3f} GiB reserved ({self.allocated / 2**30:.3f} GiB "
                            f"allocated) of {self.limit_bytes / 2**30:.3f} GiB")
            block = self._new_segment(seg_size, small)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = Block(block.segment, block.offset + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next = tail
            block.size = size
            self._insert(tail)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Optional[Block]) -> None:
        """Return a block to its pool, merged with free neighbours."""
        if block is None:
            return
        block.allocated = False
        self.allocated -= block.size
        for nb in (block.prev, block.next):
            if nb is not None and not nb.allocated:
                self._remove(nb)
                if nb is block.prev:
                    nb.size += block.size
                    nb.next = block.next
                    if block.next is not None:
                        block.next.prev = nb
                    block = nb
                else:
                    block.size += nb.size
                    block.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = block
        self._insert(block)
