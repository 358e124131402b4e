"""The scale benchmark of docs/SAMPLING.md runs as documented (on dev-clean, a few ranks: its quick check)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TSV = ROOT.parent / "shared" / "data" / "librispeech" / "dev-clean.tsv"


@pytest.mark.slow
@pytest.mark.skipif(not TSV.is_file(), reason="../shared/data (corpus metadata) is not on this machine")
def test_bench_sampler_scale_quick_check(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "scripts/bench_sampler_scale.py", "--out", str(out), "--before", "HEAD",
                           "--tsv", str(TSV), "--copies", "1", "2", "--world-sizes", "1", "4",
                           "--real-world-size", "4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench_sampler_scale.json").read_text())
    for table in report["tables"].values():
        after = {r["world_size"]: r for r in table["after"]}
        assert after[4]["forced_steps"] == 0
        # a corpus this small is a few 4-rank steps: at most one step more than its cuts need
        cuts = after[1]["steps"] * after[1]["mean_batch"]
        assert after[4]["steps"] <= math.ceil(cuts / (4 * after[1]["mean_batch"])) + 1
        assert len(table["before"]) == 2
    real = report["real_sampler"]
    assert real["num_cuts"] == 2 * 2703 and real["restore_s_10%"] > 0 and real["traced_epoch_peak_mib"] > 0
    assert "restore at 10%" in proc.stdout
