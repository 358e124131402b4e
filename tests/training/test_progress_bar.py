"""The training progress bar shows a step total only when the step limit is what ends the run."""

from types import SimpleNamespace

import pytest

from speech_ed.training.train import progress_bar


@pytest.mark.parametrize("max_steps, time_bounded, expected", [
    (500, False, 500),          # a step-bounded run: its total
    (500, True, float("inf")),  # bounded by time: the step limit is only a ceiling
])
def test_total(max_steps, time_bounded, expected):
    bar = progress_bar(25, time_bounded=time_bounded)
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=max_steps, global_step=0,
                                   num_training_batches=float("inf"))
    assert bar.total_train_batches == expected
