"""scripts/compare_decoding.py on a tiny trained run: one row per mode, WER per language, RTFx ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speech_ed.training.train import train
from tests.training.test_train_smoke import _write_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compare_decoding_reports_every_mode(tmp_path, small_cuts, tokenizer):
    cfg = _write_run(tmp_path, small_cuts, tokenizer, ["trainer.max_steps=2", "optim.warmup_steps=1"])
    train(cfg)
    out = tmp_path / "cmp.json"
    cmd = [sys.executable, str(REPO / "scripts/compare_decoding.py"), "--run-dir", str(cfg.run_dir), "--split", "dev",
           "--modes", "greedy:mode=attention", "ctc:mode=ctc", "joint:mode=joint,beam_size=2,ctc_weight=0.4",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    blob = json.loads(out.read_text())
    assert [m["name"] for m in blob["modes"]] == ["greedy", "ctc", "joint"]
    joint = blob["modes"][2]
    assert joint["options"]["mode"] == "joint" and joint["options"]["beam_size"] == 2
    assert joint["options"]["ctc_weight"] == 0.4
    assert set(joint["wer"]["per_language"]) == {"es", "it"} and blob["modes"][0]["rtfx_ratio"] == 1.0
    assert "| joint | joint beam 2 (ctc 0.4) |" in proc.stdout
    bad = subprocess.run([*cmd[:-2], "--out", str(out), "--modes", "x:nope=1"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert bad.returncode != 0 and "unknown eval field 'nope'" in bad.stderr
