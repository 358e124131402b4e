"""The caching-allocator replay: rounding, pools, segments, splitting, merging, release before an OOM."""

import pytest

from speech_ed.oomptimizer.allocator import (
    LARGE_BUFFER,
    SMALL_BUFFER,
    CachingAllocatorModel,
    SimulatedOutOfMemory,
    round_size,
    segment_size,
)

MiB = 1 << 20


def test_request_and_segment_sizes():
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert segment_size(1 * MiB) == SMALL_BUFFER  # small pool: 2 MiB segments
    assert segment_size(1 * MiB + 512) == LARGE_BUFFER  # 1-10 MiB: 20 MiB segments
    assert segment_size(10 * MiB) == 10 * MiB and segment_size(11 * MiB + 1) == 12 * MiB  # rounded to 2 MiB


def test_small_requests_share_a_segment_and_merge_back():
    a = CachingAllocatorModel(1 << 30)
    blocks = [a.malloc(1000) for _ in range(4)]  # 1024 bytes each, all from one 2 MiB segment
    assert len(a.segments) == 1 and a.reserved == SMALL_BUFFER and a.allocated == 4 * 1024
    for b in blocks:
        a.free(b)
    assert a.allocated == 0 and a.reserved == SMALL_BUFFER  # cached, not given back
    whole = a.malloc(SMALL_BUFFER // 2)
    assert len(a.segments) == 1 and whole.offset == 0  # the merged free block was reused


def test_large_block_not_split_when_the_rest_is_at_most_1_mib():
    a = CachingAllocatorModel(1 << 30)
    b = a.malloc(12 * MiB)
    a.free(b)
    c = a.malloc(int(11.5 * MiB))  # 0.5 MiB would be left: handed out whole
    assert c.size == 12 * MiB and a.allocated == 12 * MiB
    a.free(c)
    d = a.malloc(10 * MiB)  # 2 MiB left: split
    assert d.size == 10 * MiB and len(a.segments) == 1


def test_fragmentation_forces_a_new_segment_and_the_limit_applies_to_reserved_memory():
    a = CachingAllocatorModel(44 * MiB, strict=True)
    x, y = a.malloc(8 * MiB), a.malloc(8 * MiB)  # one 20 MiB segment: x | y | 4 MiB free
    a.free(x)  # free pieces 8 MiB and 4 MiB, not adjacent
    a.malloc(10 * MiB)  # fits in neither: a new 10 MiB segment (30 MiB reserved, 18 MiB allocated)
    assert a.reserved == 30 * MiB and a.allocated == 18 * MiB
    with pytest.raises(SimulatedOutOfMemory):
        a.malloc(16 * MiB)  # 46 MiB would be reserved, nothing entirely free to give back
    assert a.out_of_memory
    del y


def test_cached_segments_are_released_before_failing():
    a = CachingAllocatorModel(30 * MiB, strict=True)
    a.free(a.malloc(20 * MiB))  # a cached, entirely free 20 MiB segment
    b = a.malloc(22 * MiB)  # does not fit in it; 42 MiB > limit, so the cached one is released first
    assert b.size == 22 * MiB and a.reserved == 22 * MiB and not a.out_of_memory


def test_clone_is_independent():
    a = CachingAllocatorModel(1 << 30)
    keep = a.malloc(3 * MiB)
    a.free(a.malloc(5 * MiB))
    b = a.clone()
    assert (b.reserved, b.allocated) == (a.reserved, a.allocated)
    b.malloc(15 * MiB)
    assert a.allocated == 3 * MiB and b.allocated == 18 * MiB and len(b.segments) == len(a.segments)
    del keep
