"""One intra-op thread for these tests: on a shared 2-core machine, two OpenMP threads competing with other
jobs make a tiny training step 20x slower, and peak memory does not depend on the thread count."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
