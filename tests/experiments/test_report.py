"""The efficiency report's comparisons and criteria on a hand-made study (no training)."""

from __future__ import annotations

import pytest

from speech_ed.experiments.report import add_comparisons, study_markdown


def _run(speed, padding, curve, train_s=100.0):
    """One strategy's result; ``curve`` is [(train_s, dev_wer, dev_loss), ...]."""
    return {"audio_seconds_per_second": speed, "input_padding": padding, "output_padding": 0.1, "steps": 10,
            "mean_batch_size": 8.0, "train_seconds": train_s, "eval_seconds": 1.0, "batch_setting": "x",
            "final_dev_wer": curve[-1][1], "final_dev_loss": curve[-1][2],
            "curve": [{"train_s": t, "dev_wer": w, "dev_loss": loss, "step": i}
                      for i, (t, w, loss) in enumerate(curve)]}


def _study(random_final_wer=105.0):
    runs = {
        "random": _run(100.0, 0.5, [(0, 170, 180), (50, 120, 110), (100, random_final_wer, 100)]),
        "lhotse": _run(150.0, 0.05, [(0, 170, 180), (50, 100, 90), (100, 90, 70)]),
        "2d-oomptimizer": _run(210.0, 0.04, [(0, 170, 180), (25, 130, 95), (50, 80, 60), (100, 40, 20)]),
        "1d-sortagrad": _run(175.0, 0.05, [(0, 170, 180), (50, 70, 50), (100, 50, 30)]),
        "2d-no-sortagrad": _run(205.0, 0.04, [(0, 170, 180), (100, 98, 95)]),
    }
    return {"strategies": runs, "strategy_order": list(runs), "device": "cpu", "device_name": "test CPU",
            "created": "2026-11-26T12:00:00", "recipe": "r", "run": "x", "model_preset": "small",
            "precision": "bf16-mixed", "seed": 0, "command": "speech-ed efficiency-study ...",
            "settings": {"minutes": 1.0, "steps": None, "dev_cuts": 3, "eval_every_s": 25.0,
                         "quadratic_duration_s": 15.0, "num_buckets_lhotse": 2,
                         "sortagrad": {"random": True, "lhotse": True, "2d-oomptimizer": True, "1d-sortagrad": True,
                                       "2d-no-sortagrad": False}},
            "memory": {"memory_gib": 0.4, "memory_fraction": 1.0, "limit_gib": 0.4, "probe": "cpu",
                       "device": "cpu", "trials": 5}}


def test_comparisons_criteria_and_ablations():
    study = _study()
    add_comparisons(study)
    runs, c, k = study["strategies"], study["comparisons"], study["criteria"]
    assert runs["2d-oomptimizer"]["seconds_to_reach_random_final_wer"] == 50  # first point at or below 105
    assert runs["2d-oomptimizer"]["seconds_to_reach_random_final_loss"] == 25  # 95 <= 100
    assert runs["2d-no-sortagrad"]["seconds_to_reach_random_final_wer"] == 100
    assert runs["random"]["padded_audio_seconds_per_second"] == pytest.approx(200.0)
    assert c["audio_per_second_2d_over_random"] == 2.1 and c["audio_per_second_2d_over_lhotse"] == 1.4
    assert c["time_to_random_final_wer_2d_over_random"] == 0.5
    assert c["time_to_random_final_loss_2d_over_random"] == 0.25
    assert k == {"2d_audio_per_second_at_least_2x_random": True, "2d_audio_per_second_at_least_1.3x_lhotse": True,
                 "2d_reaches_random_final_wer_in_half_its_time": True}
    assert c["audio_per_second_2d_over_1d_sortagrad"] == 1.2
    assert c["time_to_1d_sortagrad_final_wer_2d_over_1d_sortagrad"] == 1.0  # 2D reaches 50 % only at 100 s
    assert c["time_to_1d_sortagrad_final_loss_2d_over_1d_sortagrad"] == 1.0
    assert c["random_final_wer_below_empty_output"] is False
    md = study_markdown(study, "p.png")
    assert "no better than an empty transcript" in md
    assert "SortaGrad (a shortest-first first epoch" in md and "on for random, lhotse, 2d-oomptimizer, 1d-sortagrad" in md
    assert "2D time to 1D's final dev WER / 1D's training time: 1.00 (dev loss: 1.00)" in md
    assert "- Ablation, 2D against 1D with the same SortaGrad curriculum: audio per second 1.20x" in md
    assert "- Ablation, 2D without SortaGrad: final dev WER 98.00 % (with: 40.00 %)" in md
    row = next(line for line in md.splitlines() if line.startswith("| random batching"))
    assert "| 200.0 |" in row  # padded audio s / s = 100 / (1 - 0.5)


def test_a_random_run_that_learned_gets_no_empty_output_note():
    study = _study(random_final_wer=60.0)
    add_comparisons(study)
    assert study["comparisons"]["random_final_wer_below_empty_output"] is True
    assert study["criteria"]["2d_reaches_random_final_wer_in_half_its_time"] is False  # 40 % only at 100 s
    assert "empty transcript" not in study_markdown(study, "p.png")
