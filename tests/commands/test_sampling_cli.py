"""The real CLI: import-tsv -> estimate-bins -> padding-report, on a generated TSV and a tiny tokenizer."""

import json

import numpy as np
import pytest
import yaml

from speech_ed.cli import main as cli
from speech_ed.sampling import BucketBins, load_bucket_bins, save_bucket_batch_sizes

WORDS = "hola que tal la casa es grande ciao come stai pizza mare gatto".split()


@pytest.fixture
def cuts_path(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["id\tduration_seconds\ttext"]
    for i in range(300):
        d = float(np.round(rng.uniform(0.5, 12.0), 3))
        n_words = max(1, int(d * rng.uniform(1.5, 3.0)))
        lines.append(f"u{i}\t{d}\t{' '.join(rng.choice(WORDS, n_words))}")
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "c.jsonl.gz")
    assert cli(["import-tsv", str(tmp_path / "m.tsv"), "--language", "es", "--out", out]) == 0
    return tmp_path / "c.jsonl.gz"


def common(tmp_path, cuts_path, tokenizer):
    return ["--cuts", str(cuts_path), "--tokenizer", str(tokenizer.model_path),
            "--lengths-cache", str(tmp_path / "cache")]


def test_estimate_bins_then_report(tmp_path, cuts_path, tokenizer, capsys):
    args = common(tmp_path, cuts_path, tokenizer)
    assert cli(["estimate-bins", *args, "--num-buckets", "4", "--sub-buckets", "3", "--out",
                str(tmp_path / "bins.yaml")]) == 0
    out = capsys.readouterr().out
    assert "equal" in out and "dp" in out and "(measured)" in out
    bins = load_bucket_bins(tmp_path / "bins.yaml")
    raw = yaml.safe_load((tmp_path / "bins.yaml").read_text())
    assert bins.is_2d and raw["version"] == 1 and raw["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert raw["prompt"]["prompt_len"] == 5 and isinstance(raw["num_dropped"], int)
    assert {r["method"] for r in raw["comparison"]} == {"equal", "dp"}

    assert cli(["padding-report", *args, "--strategy", "random", "1d", "2d", "lhotse", "--bins",
                str(tmp_path / "bins.yaml"), "--max-duration-s", "30", "--json", str(tmp_path / "r.json"),
                "--plot", str(tmp_path / "r.png")]) == 0
    assert "(cached)" in capsys.readouterr().out  # lengths measured once, by estimate-bins
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["strategy"] for r in report["results"]] == ["random", "1d", "2d", "lhotse"]
    for r in report["results"]:
        for key in ("num_batches", "mean_batch_size", "input_padding", "output_padding", "cuts_seen",
                    "cuts_dropped"):
            assert key in r
        assert r["cuts_seen"] == 300 and 0 <= r["input_padding"] < 1
    by = {r["strategy"]: r for r in report["results"]}
    assert by["2d"]["output_padding"] < by["random"]["output_padding"]
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_single_strategy_json_is_flat(tmp_path, cuts_path, tokenizer):
    assert cli(["padding-report", *common(tmp_path, cuts_path, tokenizer), "--strategy", "2d",
                "--num-buckets", "3", "--sub-buckets", "2", "--max-duration-s", "40",
                "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["strategy"] == "2d" and report["num_buckets"] <= 6 and "meta" in report


def test_mismatched_batch_sizes_is_a_clear_error(tmp_path, cuts_path, tokenizer, capsys):
    from speech_ed.sampling.io import save_bucket_bins

    save_bucket_bins(tmp_path / "bins.yaml", BucketBins([5.0, 5.0, 12.0], [20, 40, 80]))
    save_bucket_batch_sizes(tmp_path / "bs.yaml", [8, 4])
    rc = cli(["padding-report", *common(tmp_path, cuts_path, tokenizer), "--strategy", "2d", "--bins",
              str(tmp_path / "bins.yaml"), "--batch-sizes", str(tmp_path / "bs.yaml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bs.yaml: 2 batch sizes but the bucket bins (" in err and "bins.yaml) have 3 buckets" in err


def test_import_tsv_reports_the_bad_line(tmp_path, capsys):
    (tmp_path / "bad.tsv").write_text("id\tduration_seconds\ttext\na\t1.0\thi\nb\tnope\tho\n")
    out = str(tmp_path / "o.jsonl.gz")
    assert cli(["import-tsv", str(tmp_path / "bad.tsv"), "--language", "en", "--out", out]) == 2
    assert "bad.tsv:3: field 'duration_seconds' is 'nope'" in capsys.readouterr().err


def test_wandb_offline(tmp_path, cuts_path, tokenizer, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert cli(["padding-report", *common(tmp_path, cuts_path, tokenizer), "--strategy", "random", "2d",
                "--num-buckets", "3", "--sub-buckets", "2", "--max-duration-s", "40", "--wandb",
                "--wandb-group", "test"]) == 0
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_recipe_stage_writes_bins_once(tmp_path, cuts_path, tokenizer):
    from speech_ed.config import load_config
    from speech_ed.data.bin_estimation import estimate_bins_for_run

    cfg = load_config([], [f"exp_dir={tmp_path / 'exp'}", "data.sampler=2d", "data.num_buckets=3",
                           f"data.bucket_bins={tmp_path / 'bins.yaml'}", f"tokenizer.path={tokenizer.model_path}",
                           f"data.manifest_dir={cuts_path.parent}", "data.max_duration_s=40"])
    cuts_path.rename(cuts_path.parent / "cuts_train.jsonl.gz")
    estimate_bins_for_run(cfg, sub_buckets=2)
    bins = load_bucket_bins(tmp_path / "bins.yaml")
    assert bins.is_2d and len(bins.duration_groups()) <= 3
    mtime = (tmp_path / "bins.yaml").stat().st_mtime_ns
    estimate_bins_for_run(cfg, sub_buckets=2)
    assert (tmp_path / "bins.yaml").stat().st_mtime_ns == mtime


def test_padding_report_simulates_many_ranks_and_names_the_buffer(tmp_path, cuts_path, tokenizer, capsys):
    """docs/SAMPLING.md: `padding-report --world-size W` prints steps, forced steps and the buffer used/needed."""
    args = common(tmp_path, cuts_path, tokenizer)
    assert cli(["estimate-bins", *args, "--num-buckets", "3", "--sub-buckets", "2", "--out",
                str(tmp_path / "bins.yaml")]) == 0
    assert cli(["padding-report", *args, "--strategy", "2d", "--bins", str(tmp_path / "bins.yaml"),
                "--max-duration-s", "30", "--world-size", "4", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "world size 4, buffer 300 cuts (needed" in out  # the automatic buffer holds this small epoch
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["forced_steps"] == 0 and report["world_size"] == 4
    with pytest.warns(UserWarning, match="below the .* cuts needed"):
        assert cli(["padding-report", *args, "--strategy", "2d", "--bins", str(tmp_path / "bins.yaml"),
                    "--max-duration-s", "30", "--world-size", "4", "--buffer-size", "20",
                    "--json", str(tmp_path / "r2.json")]) == 0
    assert json.loads((tmp_path / "r2.json").read_text())["forced_steps"] > 0
