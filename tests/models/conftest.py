"""Model tests run single-threaded: with 2 OpenMP threads on a shared 2-core machine, every small op waits
for a descheduled thread whenever another process is busy (measured: 11.6 s instead of 0.016 s for one tiny
greedy decode), and these tests only use small tensors."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
