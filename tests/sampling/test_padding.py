"""Padding statistics equal a hand count; lengths are measured once and cached."""

import numpy as np
import pytest

from speech_ed.sampling import Lengths, batch_padding, measure_lengths, padding_stats
from tests.sampling.helpers import synthetic_cuts


def test_padding_equals_hand_count():
    durations = np.array([1.0, 2.0, 3.0, 0.5])
    tokens = np.array([3, 5, 4, 9])
    stats = padding_stats(durations, tokens, [np.array([0, 1]), np.array([2]), np.array([3, 0])])
    # frames (10 ms): A pads 100 to 200 -> 400 slots for 300 real; B 300/300; C pads 50 to 100 -> 200 for 150
    assert stats["real_frames"] == 750 and stats["padded_frames"] == 150
    assert stats["input_padding"] == pytest.approx(150 / 900)
    # tokens: A 2 x 5 = 10 slots for 8; B 4 for 4; C 2 x 9 = 18 for 12
    assert stats["real_tokens"] == 24 and stats["padded_tokens"] == 8
    assert stats["output_padding"] == pytest.approx(8 / 32)
    assert stats["num_batches"] == 3 and stats["mean_batch_size"] == pytest.approx(5 / 3)
    assert stats["batch_sizes"] == [2, 1, 2]


def test_single_batch_helper():
    assert batch_padding([1.0, 1.0], [4, 4]) == (0.0, 0.0)
    # 100 + 300 frames in 2 x 300 slots; 2 + 6 tokens in 2 x 6 slots
    assert batch_padding([1.0, 3.0], [2, 6]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_measure_lengths_caches(tmp_path):
    cuts, tokens = synthetic_cuts(n=50)
    calls = []

    def count(cut):
        calls.append(cut.id)
        return tokens[cut.id]

    first = measure_lengths(cuts, count, cache_path=tmp_path / "l.npz")
    again = measure_lengths(cuts, count, cache_path=tmp_path / "l.npz")
    assert len(calls) == 50  # the second call read the cache
    assert list(again.ids) == [c.id for c in cuts] and again.tokens.tolist() == [tokens[c.id] for c in cuts]
    assert np.array_equal(first.durations, again.durations)
    assert isinstance(again, Lengths) and len(again) == 50
