"""The two peak-memory instruments: the allocator profile (cpu probe) and the storage tracker (simulate)."""

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from speech_ed.oomptimizer.memory import (
    DATA_DEPENDENT_FLOAT,
    StorageTracker,
    allocator_peak_bytes,
    storage_bytes,
)

MB = 1 << 20


def test_allocator_peak_sees_allocations_and_frees():
    def fn():
        a = torch.ones(MB // 4)  # 1 MiB
        b = torch.ones(MB // 2)  # 2 MiB
        del a
        c = torch.ones(MB)  # 4 MiB, while b is alive: peak 6 MiB
        del b, c

    peak, final = allocator_peak_bytes(fn)
    assert 6 * MB <= peak < 6 * MB + 64 * 1024
    assert abs(final) < 64 * 1024


def test_tracker_counts_live_storages_once_and_sees_frees():
    tracker = StorageTracker()
    with tracker:
        a = torch.ones(1000)
        v = a[:10]  # a view: no new storage
        b = a * 2
        assert tracker.live == 8000
        del a, b
        assert tracker.live == 4000  # v keeps a's storage alive
        del v
    assert tracker.live == 0 and tracker.peak == 8000


def test_tracker_rounds_to_blocks_and_tracks_existing():
    w = torch.ones(10)
    tracker = StorageTracker(block_bytes=512)
    tracker.track([w, w[:5]])
    assert tracker.live == 512
    with tracker:
        x = torch.ones(200)  # 800 bytes -> 1024
    assert tracker.peak == 1536
    del x


def test_storage_bytes_counts_shared_storage_once():
    a = torch.ones(100)
    assert storage_bytes([a, a[:5], torch.ones(10)]) == 440


def test_fake_tracker_runs_ctc_and_reads_float_scalars():
    with FakeTensorMode():
        tracker = StorageTracker(fake=True)
        with tracker:
            logits = torch.randn(50, 4, 20, requires_grad=True)
            lp = logits.log_softmax(-1)
            loss = F.ctc_loss(lp, torch.randint(1, 20, (4, 10)), torch.full((4,), 50), torch.full((4,), 10),
                              reduction="sum", zero_infinity=True)
            assert float(loss.detach()) == DATA_DEPENDENT_FLOAT
            loss.backward()
            assert logits.grad.shape == (50, 4, 20)
    # log_alpha (B, T, 2N+1) float32 is among the live storages at the peak
    assert tracker.peak >= 4 * 50 * 21 * 4


def test_fake_tracker_refuses_integer_values():
    with FakeTensorMode():
        lens = torch.randint(1, 10, (4,))
        with StorageTracker(fake=True), pytest.raises(RuntimeError, match="use the cpu or cuda probe"):
            int(lens.max())
