"""``speech-ed efficiency-study`` end to end on a tiny generated run, and the pieces it is built from."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from lhotse import CutSet

from speech_ed.cli import main as cli_main
from speech_ed.data.prompt import count_decoder_tokens
from speech_ed.experiments.budgets import duration_intervals, safe_max_duration
from speech_ed.experiments.dev_curve import DevCurve
from speech_ed.sampling import estimate_bucket_bins
from speech_ed.sampling.io import save_bucket_bins
from tests.conftest import TEXTS, make_cut

SLOW_EVAL_S = 0.3


def _prepared_run(root, tokenizer):
    """exp/espeak_multilingual/t with manifests, tokenizer and 2D bins, as the recipe's stages 0-2 leave it."""
    run = root / "exp" / "espeak_multilingual" / "t"
    (run / "manifests").mkdir(parents=True)
    (run / "tokenizer").mkdir()
    for name in ("tokenizer.model", "tokenizer.json"):
        (run / "tokenizer" / name).write_bytes((tokenizer.model_path.parent / name).read_bytes())
    cuts = [make_cut(root, f"{lang}-{k}-{i}", text, lang, duration=0.4 + 0.15 * i + 0.1 * k)
            for k in range(3) for lang, texts in TEXTS.items() for i, text in enumerate(texts)]
    CutSet.from_cuts(cuts).to_file(run / "manifests" / "cuts_train.jsonl.gz")
    CutSet.from_cuts(cuts[:4]).to_file(run / "manifests" / "cuts_dev.jsonl.gz")
    durations = np.array([c.duration for c in cuts])
    tokens = np.array([count_decoder_tokens(c, tokenizer) for c in cuts])
    save_bucket_bins(run / "bucket_bins.yaml", estimate_bucket_bins(durations, tokens, num_buckets=2,
                                                                     num_subbuckets=2, method="equal"))
    return run


def _study_args(root, *extra):
    return ["efficiency-study", "--recipe", "espeak_multilingual", "--run", "t", "--steps", "3", "--minutes", "5",
            "--memory-gib", "0.012", "--rel-gap", "0.2", "--interval-ratio", "1.3", "--dev-cuts", "3",
            "--eval-every-s", "0", "--report-dir", str(root / "docs"), f"exp_dir={root / 'exp'}",
            "model_preset=tiny", "data.num_workers=0", "data.num_buckets=2", "optim.warmup_steps=1", *extra]


@pytest.mark.slow
def test_efficiency_study_end_to_end(tmp_path, tokenizer, monkeypatch, capsys):
    run = _prepared_run(tmp_path, tokenizer)
    measure = DevCurve.measure

    def slow_measure(self, model):  # an evaluation that costs time the training clocks must not count
        time.sleep(SLOW_EVAL_S)
        return measure(self, model)

    monkeypatch.setattr(DevCurve, "measure", slow_measure)
    assert cli_main(_study_args(tmp_path)) == 0

    report = json.loads((tmp_path / "docs" / "efficiency.json").read_text())
    study = report["studies"]["cpu"]
    assert study == json.loads((run / "efficiency" / "efficiency.json").read_text())
    runs = study["strategies"]
    assert study["strategy_order"] == ["random", "lhotse", "2d-oomptimizer"]
    assert set(runs) == set(study["strategy_order"])
    assert {k: r["sampler"] for k, r in runs.items()} == {"random": "random", "lhotse": "lhotse",
                                                          "2d-oomptimizer": "2d"}
    # every batch the random and 1D budgets allow fits: floor(D / eff(lo)) cuts at most in each interval
    probed = json.loads((run / "efficiency" / "budgets.json").read_text())["result"]
    for name, q in (("random", None), ("1d", 15.0)):
        d = study["budgets"][name]["max_duration_s"]
        assert d > 0
        for (lo, _, _), b in zip(probed["intervals"], probed["interval_batch_sizes"]):
            assert int(d // (lo + lo * lo / q if q else lo)) <= b
    for name, r in runs.items():
        for key in ("mean_batch_size", "input_padding", "output_padding", "audio_seconds_per_second", "steps",
                    "final_dev_wer", "seconds_to_reach_random_final_wer"):
            assert key in r, (name, key)
        assert r["steps"] == 3 and r["mean_batch_size"] >= 1
        assert 0 <= r["input_padding"] < 1 and 0 <= r["output_padding"] < 1 and r["audio_seconds_per_second"] > 0
        assert [p["step"] for p in r["curve"]] == [0, 1, 2, 3]  # before the first step, then after every step
        assert all(p["dev_wer"] is not None and p["dev_loss"] > 0 for p in r["curve"])
        assert r["largest_batches_measured"] and all(b["cuts"] >= 1 for b in r["largest_batches_measured"])
    for b in runs["random"]["largest_batches_measured"]:  # the padding-aware budget held in training
        assert b["cuts"] * b["longest_s"] <= study["budgets"]["random"]["max_duration_s"] + 1e-3 * b["cuts"]
    for b in runs["2d-oomptimizer"]["largest_batches_measured"]:
        assert b["cuts"] <= max(study["budgets"]["2d-oomptimizer"]["batch_sizes"])
    for r in runs.values():
        # evaluation time is excluded from the training clock, from Lightning's max_time timer and from the
        # time-based schedule (the same clock): with it, training + evaluation would exceed the wall time
        assert r["eval_seconds"] >= 4 * SLOW_EVAL_S
        assert r["train_seconds"] + r["eval_seconds"] <= r["wall_seconds"] + 0.05, r
        assert abs(r["timer_seconds"] - r["train_seconds"]) < 0.2, r
        assert r["curve"][-1]["train_s"] < r["train_seconds"] + 0.01
    assert runs["random"]["seconds_to_reach_random_final_wer"] is not None  # its own final point reaches it
    # the 2D run uses the OOMptimizer's sizes, written beside the study
    sizes = (run / "efficiency" / "bucket_batch_sizes.yaml").read_text()
    assert "model_hash" in sizes and "probe: cpu" in sizes
    assert (tmp_path / "docs" / "efficiency_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "docs" / "EFFICIENCY.md").read_text()
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "padding" not in line]
    assert rows == ["| random batching", "| 1D buckets (lhotse) + quadratic penalty", "| 2D buckets + OOMptimizer"]
    assert "![dev WER and loss against training time](efficiency_cpu.png)" in md

    # a second study reuses the probing and the finished runs, and adds the two ablations
    capsys.readouterr()
    ablations = "random,lhotse,2d-oomptimizer,1d-sortagrad,2d-no-sortagrad"
    assert cli_main(_study_args(tmp_path, "--strategies", ablations)) == 0
    out = capsys.readouterr().out
    assert "budgets: reusing" in out and out.count("reusing the finished run") == 3
    study2 = json.loads((run / "efficiency" / "efficiency.json").read_text())
    runs2 = study2["strategies"]
    assert {k: r["sampler"] for k, r in runs2.items()} == {
        "random": "random", "lhotse": "lhotse", "2d-oomptimizer": "2d", "1d-sortagrad": "1d",
        "2d-no-sortagrad": "2d"}
    assert study2["settings"]["sortagrad"]["1d-sortagrad"] is True
    assert study2["settings"]["sortagrad"]["2d-no-sortagrad"] is False
    assert study2["budgets"] == study["budgets"]  # the ablations train with the main strategies' settings
    assert runs2["1d-sortagrad"]["batch_setting"] == runs2["lhotse"]["batch_setting"]
    assert runs2["2d-no-sortagrad"]["batch_setting"] == runs2["2d-oomptimizer"]["batch_setting"]
    for name in ("random", "lhotse", "2d-oomptimizer"):  # reused as they were
        assert runs2[name]["curve"] == runs[name]["curve"]
    assert study2["criteria"] == study["criteria"]  # the criteria compare the main three only
    assert "audio_per_second_2d_over_1d_sortagrad" in study2["comparisons"]
    for r in runs2.values():
        assert r["padded_audio_seconds_per_second"] >= r["audio_seconds_per_second"] > 0
    md = (tmp_path / "docs" / "EFFICIENCY.md").read_text()
    assert "| ablation: 1D buckets (speech_ed) + quadratic penalty, SortaGrad |" in md
    assert "- Ablation, 2D without SortaGrad: final dev WER" in md


def test_missing_prepared_run_is_a_clear_error(tmp_path, capsys):
    assert cli_main(_study_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "not prepared" in err and "cuts_train.jsonl.gz" in err and "tokenizer.model" in err
    assert cli_main(_study_args(tmp_path, "--strategies", "random,2d")) == 1
    assert "unknown ['2d']" in capsys.readouterr().err
    assert cli_main(_study_args(tmp_path, "--strategies", "random,1d")) == 1  # lhotse's sampler, named otherwise
    assert "'1d' is now 'lhotse'" in capsys.readouterr().err


def test_duration_intervals_and_safe_budget():
    durations = np.array([1.0, 1.05, 1.3, 2.0, 2.1, 4.0])
    tokens = np.array([10, 30, 12, 20, 25, 40])
    intervals = duration_intervals(durations, tokens, ratio=1.1)
    # every duration is in exactly one interval, hi <= 1.1 lo, tokens are the most of any cut not longer than hi
    assert intervals == [(1.0, 1.05, 30), (1.3, 1.3, 30), (2.0, 2.1, 30), (4.0, 4.0, 40)]
    # interval k fits B_k cuts at its worst; a budget D allows floor(D / lo) cuts of that interval
    sizes = [10, 7, 4, 2]
    budget, limiting = safe_max_duration(intervals, sizes)
    assert limiting == 2 and budget == pytest.approx(9.9)  # (4 + 1) x 2.0, just below 10, to 0.1 s
    for (lo, _, _), b in zip(intervals, sizes):
        assert int(budget // lo) <= b
    assert int(10.0 // 2.0) > 4  # at 10 s interval 2 could form a batch of 5 (2.0 s each)
    q_budget, _ = safe_max_duration(intervals, sizes, quadratic_duration_s=15)
    assert q_budget > budget  # the penalty counts every cut as longer, so the same sizes allow more seconds
    with pytest.raises(ValueError, match="not even one"):
        safe_max_duration(intervals, [9, 0, 4, 2])
