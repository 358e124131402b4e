"""`speech-ed oomptimize` end to end on the tiny model: table, YAML, and the training-side check."""

from dataclasses import replace

import pytest
import yaml

from speech_ed.cli import main
from speech_ed.config import load_config
from speech_ed.oomptimizer.io import check_batch_sizes_match
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.io import load_bucket_bins, save_bucket_bins


@pytest.mark.slow
def test_oomptimize_simulate_writes_checked_sizes(tmp_path, capsys):
    bins_path, out = tmp_path / "bucket_bins.yaml", tmp_path / "bucket_batch_sizes.yaml"
    save_bucket_bins(bins_path, BucketBins([1.0, 2.0], [12, 24]))
    overrides = ["model_preset=tiny", f"exp_dir={tmp_path}/exp"]
    rc = main(["oomptimize", "--bins", str(bins_path), "--probe", "simulate", "--memory-budget-gib", "0.02",
               "--memory-fraction", "1.0", "--rel-gap", "0.4", "--start-batch-size", "16",
               "--vocab-size", "64", "--out", str(out), *overrides])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "batch" in printed and "peak_GiB" in printed and "trials" in printed
    data = yaml.safe_load(out.read_text())
    assert data["probe"] == "simulate" and data["dtype"] == "bf16-mixed" and data["safety_margin"] == 0.1
    assert data["max_batch_sizes"][0] >= data["max_batch_sizes"][1] >= 1
    assert data["batch_sizes"] == [max(1, int(b * 0.9)) for b in data["max_batch_sizes"]]
    assert "--vocab-size 64" in data["command"] and "model_preset=tiny" in data["command"]
    cfg = load_config([], overrides)
    dims = replace(cfg.model, vocab_size=64)
    assert check_batch_sizes_match(out, load_bucket_bins(bins_path), dims) == data["batch_sizes"]


def test_oomptimize_cpu_probe(tmp_path, capsys):
    bins_path, out = tmp_path / "bucket_bins.yaml", tmp_path / "bs.yaml"
    save_bucket_bins(bins_path, BucketBins([1.0], [12]))
    rc = main(["oomptimize", "--bins", str(bins_path), "--probe", "cpu", "--memory-budget-gib", "0.01",
               "--rel-gap", "0.3", "--start-batch-size", "4", "--vocab-size", "64", "--out", str(out),
               "model_preset=tiny", f"exp_dir={tmp_path}/exp"])
    assert rc == 0
    data = yaml.safe_load(out.read_text())
    assert data["probe"] == "cpu" and data["batch_sizes"][0] >= 1
    assert data["peak_memory_gib"][0] <= 0.01 * 0.9


def test_oomptimize_simulate_for_a_target_gpu(tmp_path, capsys):
    """--target-gpu traces the CUDA model and judges trials by the caching-allocator replay."""
    bins_path, out = tmp_path / "bucket_bins.yaml", tmp_path / "bs.yaml"
    save_bucket_bins(bins_path, BucketBins([1.0, 2.0], [12, 24]))
    rc = main(["oomptimize", "--bins", str(bins_path), "--probe", "simulate", "--target-gpu", "a100-40gb",
               "--memory-budget-gib", "0.1", "--rel-gap", "0.4", "--start-batch-size", "16",
               "--vocab-size", "64", "--out", str(out), "model_preset=tiny", f"exp_dir={tmp_path}/exp"])
    assert rc == 0
    data = yaml.safe_load(out.read_text())
    assert data["device"].startswith("simulated a100-40gb") and data["max_batch_sizes"][0] >= 1
    assert all(p <= 0.1 * 0.9 for p in data["peak_memory_gib"])
