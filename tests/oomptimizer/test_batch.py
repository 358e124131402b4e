"""Synthetic worst-case batches."""

import pytest
import torch

from speech_ed.data.prompt import PROMPT_LEN
from speech_ed.oomptimizer.batch import bucket_shapes, make_worst_case_batch, tokens_for_1d_bin


def test_shapes_follow_the_bucket_bounds():
    b = make_worst_case_batch(3, 1.5, 20, vocab_size=50)
    assert b["audio"].shape == (3, 24000) and b["audio"].dtype == torch.float32
    assert b["audio_lens"].tolist() == [24000] * 3
    assert b["tokens_in"].shape == b["targets"].shape == (3, 19)
    n = 20 - PROMPT_LEN - 1
    assert b["ctc_targets"].shape == (3, n) and b["ctc_target_lens"].tolist() == [n] * 3
    assert int(b["tokens_in"].max()) < 50 and int(b["tokens_in"].min()) >= 0
    assert int(b["ctc_targets"].min()) >= 1  # 0 is the CTC blank
    assert (b["targets"] != -100).all()  # every position is scored: the worst case


def test_short_token_bounds_keep_one_ctc_token():
    assert bucket_shapes(1.0, 3)["ctc_len"] == 1
    with pytest.raises(ValueError):
        bucket_shapes(1.0, 1)
    with pytest.raises(ValueError):
        bucket_shapes(0.0, 10)


def test_1d_bins_get_a_conservative_token_count():
    assert tokens_for_1d_bin(10.0) == 120 + PROMPT_LEN + 1
    assert tokens_for_1d_bin(1.01, tokens_per_second=10) == 11 + PROMPT_LEN + 1
