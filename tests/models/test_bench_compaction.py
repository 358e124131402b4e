"""scripts/bench_decode_compaction.py end to end on a tiny decoder: it writes its JSON and checks identity."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_compaction_benchmark_runs_and_finds_identical_outputs(tmp_path):
    tsv = tmp_path / "lengths.tsv"
    tsv.write_text("id\tduration_seconds\ttext\n" + "".join(f"u{i}\t{d}\tx\n" for i, d in
                                                             enumerate([1.2, 4.0, 2.5, 7.0, 1.5, 3.0])))
    cmd = [sys.executable, str(REPO / "scripts/bench_decode_compaction.py"), "--presets", "tiny", "--cuts", str(tsv),
           "--num-utterances", "0", "--batch-sizes", "3", "--beam-utterances", "6", "--beam-size", "2",
           "--repeats", "1", "--threads", "1", "--dtype", "fp32", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    blob = json.loads((tmp_path / "out" / "compaction.json").read_text())
    rows = {(r["kind"], r["order"]) for r in blob["results"]}
    assert rows == {("greedy", "sorted"), ("greedy", "shuffled"), ("beam", "sorted"), ("beam", "shuffled")}
    for r in blob["results"]:
        assert r["identical"] and r["batches"] == 2 and r["output_tokens"] == sum(
            max(1, round(5.0 * d)) for d in [1.2, 4.0, 2.5, 7.0, 1.5, 3.0])
        assert all(s > 0 for s in r["seconds"].values())
