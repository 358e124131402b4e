"""scripts/compare_runs.py: the equal-work check of a code change (same batches? same losses? same WER?)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["epoch", "step", "train/bucket", "train/batch_size", "train/audio_seconds", "train/loss", "train/lr",
           "val/loss"]


def write_run(run_dir: Path, rows: list[dict], macro: float | None = None) -> Path:
    (run_dir / "logs").mkdir(parents=True)
    with open(run_dir / "logs" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if macro is not None:
        (run_dir / "results.json").write_text(json.dumps({
            "decoding": "joint beam 4 (ctc 0.3)", "wer": {"macro": macro, "per_language": {"es": macro}},
            "wer_ctc": {"macro": 2 * macro}}))
    return run_dir


def rows(n: int = 4) -> list[dict]:
    out = [{"epoch": 0, "step": 24 + 25 * i, "train/bucket": i % 3, "train/batch_size": 30 + i,
            "train/audio_seconds": 80.5 + i, "train/loss": 70.0 - i, "train/lr": 1e-3 * (i + 1)} for i in range(n)]
    out.insert(2, {"epoch": 0, "step": 60, "val/loss": 3.0})  # a validation row: no train/loss, not compared
    return out


def run(*args) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_runs.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout + proc.stderr


def test_identical_runs_report_same_batches_and_zero_difference(tmp_path):
    old = write_run(tmp_path / "old", rows(), macro=12.6)
    new = write_run(tmp_path / "new", rows(), macro=12.6)
    rc, out = run(old, new, "--json", tmp_path / "cmp.json")
    assert rc == 0, out
    res = json.loads((tmp_path / "cmp.json").read_text())
    assert res["shared_steps"] == 4 and res["steps_with_other_batch"] == 0
    assert res["max_abs_diff_loss"] == 0 and res["identical_loss_steps"] == 4
    assert res["macro_wer_diff"] == 0
    assert "steps whose batch differs (bucket, batch size, audio seconds): 0" in out


def test_a_different_batch_and_loss_are_found_and_located(tmp_path):
    changed = rows()
    changed[3]["train/bucket"] = 7           # step 74 drew another bucket
    changed[4]["train/loss"] += 0.5          # step 99's loss moved
    old = write_run(tmp_path / "old", rows(), macro=12.6)
    new = write_run(tmp_path / "new", changed, macro=13.1)
    rc, out = run(old, new, "--json", tmp_path / "cmp.json")
    assert rc == 0, out
    res = json.loads((tmp_path / "cmp.json").read_text())
    assert (res["steps_with_other_batch"], res["first_step_with_other_batch"]) == (1, 74)
    assert abs(res["max_abs_diff_loss"] - 0.5) < 1e-9 and res["identical_loss_steps"] == 3
    assert res["macro_wer_diff"] == 0.5
    assert "macro WER new - old: +0.50 points" in out


def test_missing_metrics_is_a_clear_error(tmp_path):
    old = write_run(tmp_path / "old", rows())
    rc, out = run(old, tmp_path / "nothing")
    assert rc == 2 and "metrics.csv does not exist" in out
