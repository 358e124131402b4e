"""The commands of docs/OOMPTIMIZER.md, run small: the same scripts and flags, a tiny model and little data.

The full runs take 20 minutes to hours on this CPU; here each script runs end to end on the ``tiny`` preset
(slow tier) and the GPU check runs where there is a GPU (gpu tier).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(SCRIPTS))


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_gpu_check_names_the_gpu_it_runs_on():
    from gpu_oomptimizer_check import guess_target_gpu

    assert guess_target_gpu("NVIDIA H100 80GB HBM3", 79.18, (9, 0)) == "h100-80gb"
    assert guess_target_gpu("NVIDIA H200", 139.8, (9, 0)) == "h200-141gb"
    assert guess_target_gpu("NVIDIA A100-SXM4-40GB", 39.4, (8, 0)) == "a100-40gb"
    assert guess_target_gpu("Some sm90 board", 94.0, (9, 0)) == "h100-80gb"  # same capability, closest memory


@pytest.mark.bench
def test_simulate_vs_cuda_script(tmp_path):
    out = tmp_path / "vs_cuda"
    printed = run("bench_oomptimizer_simulate_vs_cuda.py", "--out", str(out), "--preset", "tiny",
                  "--vocab-size", "64", "--total-gib", "0.5", "--skip-variants")
    report = json.loads((out / "bench_oomptimizer_simulate_vs_cuda.json").read_text())
    before, after = (s["sizes"] for s in report["searches"])
    assert len(before) == len(after) == 6 and min(after) >= 1
    assert after[0] >= after[-1]  # the shortest bucket fits the most examples
    assert len(report["peaks_at_cuda_sizes"]) == 5 and "tensor peak (GiB) at the cuda sizes" in printed


@pytest.mark.bench
@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_mixture_script(tmp_path):
    data = tmp_path / "data"
    for tsv in DATA.glob("*/*.tsv"):
        if "all_clips" in tsv.name:
            continue
        dest = data / tsv.parent.name / tsv.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tsv, encoding="utf-8") as f:
            dest.write_text("".join(line for _, line in zip(range(31), f)), encoding="utf-8")
    out = tmp_path / "mixture"
    printed = run("bench_oomptimizer_mixture.py", "--out", str(out), "--data-dir", str(data),
                  "--presets", "tiny", "--vocab-size", "64", "--memory-budget-gib", "0.5",
                  "--tokenizer-vocab", "200", "--duration-buckets", "2", "--sub-buckets", "2")
    report = json.loads((out / "bench_oomptimizer_mixture.json").read_text())
    assert {r["source"] for r in report["sources"]} >= {"librispeech_en", "commonvoice_ps", "europarl_pt-en"}
    res = report["results"]["tiny"]
    assert len(res["sizes"]) == len(report["bins"]) and min(res["sizes"]) >= 1
    assert [b["label"] for b in res["baselines"]] == ["2D 2x2 bins + one max_duration_s",
                                                        "1D x30 + one max_duration_s",
                                                        "no bucketing + one max_duration_s"]
    for b in res["baselines"]:
        assert b["all_fit"] and 0.0 <= b["input_padding"] < 1.0 and b["mean_batch_size"] > 0
    assert "summary: mean batch size, ours / best single budget" in printed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_check_script(tmp_path):
    printed = run("gpu_oomptimizer_check.py", "--out", str(tmp_path), "--presets", "tiny", "--steps", "2")
    report = json.loads((tmp_path / "gpu_oomptimizer_check.json").read_text())
    rows = report["presets"][0]["buckets"]
    assert len(rows) == 6 and all(r["cuda_batch_size"] >= 1 and r["simulate_batch_size"] >= 1 for r in rows)
    assert "simulate as" in printed
