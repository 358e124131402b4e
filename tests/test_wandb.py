"""W&B without an account: a short training and a padding report write offline runs; read their files back."""

import sys
from pathlib import Path

import pytest

from speech_ed.config import load_config
from speech_ed.sampling import BucketBins
from speech_ed.sampling.io import save_bucket_bins
from speech_ed.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
import wandb_records

STEP_METRICS = ("train/input_padding", "train/output_padding", "train/batch_size", "train/bucket", "train/lr",
                "train/audio_seconds", "train/loss")


@pytest.fixture
def no_account(tmp_path, monkeypatch):
    """No API key, no ~/.netrc, no WANDB_MODE: the code must choose offline by itself."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_training_run_logs_config_and_padding_every_step(tmp_path, small_cuts, tokenizer, no_account):
    man = tmp_path / "manifests"
    man.mkdir()
    for split in ("train", "dev", "test"):
        small_cuts.to_file(man / f"cuts_{split}.jsonl.gz")
    save_bucket_bins(tmp_path / "bins.yaml", BucketBins(durations=[0.45, 0.7], tokens=[100, 100]))
    cfg = load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}/exp", "run=wb",
                           f"data.manifest_dir={man}",
                           f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                           "prepare.languages=[es,it]", "data.sampler=bucket2d",
                           f"data.bucket_bins={tmp_path}/bins.yaml", "data.max_duration_s=1.5",
                           "data.max_utterance_s=1.0", "data.num_workers=0", "trainer.max_steps=4",
                           "optim.warmup_steps=1", "trainer.accelerator=cpu", "trainer.devices=1",
                           "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=100",
                           "trainer.logger=wandb", "optim.lr=0.0015"])
    train(cfg)

    (run_file,) = wandb_records.offline_runs(cfg.run_dir)  # offline, chosen without any account
    run = wandb_records.run_record(run_file)
    assert run.display_name == "espeak_multilingual/wb"
    config = wandb_records.config(run_file)
    assert config["optim"]["lr"] == 0.0015 and config["data"]["sampler"] == "bucket2d"  # the resolved config
    assert config["model"]["encoder_dim"] == cfg.model.encoder_dim

    rows = wandb_records.history(run_file)
    assert [r["trainer/global_step"] for r in rows] == [0, 1, 2, 3]  # one row per step
    for r in rows:
        for key in STEP_METRICS:
            assert key in r, (key, r)
        assert 0.0 <= r["train/input_padding"] < 1.0 and 0.0 <= r["train/output_padding"] < 1.0
        assert r["train/bucket"] in (-1, 0, 1) and r["train/batch_size"] >= 1
    # throughput needs the previous step's end time
    assert all("train/audio_s_per_s" in r and "train/tokens_per_s" in r for r in rows[1:])
    assert any(r["train/input_padding"] > 0 for r in rows)  # mixed lengths: some padding was measured


def test_padding_report_logs_one_run_per_strategy_in_one_group(tmp_path, small_cuts, tokenizer, no_account):
    from speech_ed.cli import main as cli_main

    small_cuts.to_file(tmp_path / "cuts.jsonl.gz")
    rc = cli_main(["padding-report", "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--tokenizer",
                   str(tokenizer.model_path), "--strategy", "random", "1d", "2d", "--max-duration-s", "1.5",
                   "--num-buckets", "2", "--sub-buckets", "2", "--no-cache", "--wandb",
                   "--wandb-group", "cmp",
                   "--wandb-dir", str(tmp_path)])
    assert rc == 0
    runs = wandb_records.offline_runs(tmp_path)
    records = [wandb_records.run_record(r) for r in runs]
    assert sorted(r.display_name for r in records) == ["1d", "2d", "random"]
    assert {r.run_group for r in records} == {"cmp"} and {r.job_type for r in records} == {"padding-report"}
    for path in runs:
        (row,) = wandb_records.history(path)
        assert 0.0 <= row["input_padding"] < 1.0 and 0.0 <= row["output_padding"] < 1.0
        assert wandb_records.config(path)["strategy"] == wandb_records.run_record(path).display_name
