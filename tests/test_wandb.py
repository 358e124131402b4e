"""W&B without an account: a short training and a padding report write offline runs; read their files back."""

import json
import sys
from pathlib import Path

import pytest
import torch

from speech_ed.config import load_config
from speech_ed.sampling import BucketBins
from speech_ed.sampling.io import save_bucket_bins
from speech_ed.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
import wandb_records

STEP_METRICS = ("train/input_padding", "train/output_padding", "train/batch_size", "train/bucket", "train/lr",
                "train/audio_seconds", "train/loss", "train/all_ranks/input_padding",
                "train/all_ranks/output_padding", "train/all_ranks/batch_size", "train/all_ranks/audio_seconds")


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
                           "prepare.languages=[es,it]", "data.sampler=2d",
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
    assert config["optim"]["lr"] == 0.0015 and config["data"]["sampler"] == "2d"  # the resolved config
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
    assert all("train/all_ranks/audio_s_per_s" in r for r in rows[1:])
    assert any(r["train/input_padding"] > 0 for r in rows)  # mixed lengths: some padding was measured
    for r in rows:  # one process: the all-ranks sums are this rank's batch
        assert r["train/all_ranks/input_padding"] == pytest.approx(r["train/input_padding"])
        assert r["train/all_ranks/output_padding"] == pytest.approx(r["train/output_padding"])
        assert r["train/all_ranks/batch_size"] == r["train/batch_size"]

    defined = metric_definitions(run_file)  # define_metric: step axis and summaries
    assert defined["train/input_padding"].step_metric == "trainer/global_step"
    assert defined["train/all_ranks/input_padding"].summary.mean
    assert defined["train/loss"].summary.min and defined["train/lr"].summary.last
    assert defined["train/*"].step_metric == "trainer/global_step"


def metric_definitions(run_file) -> dict:
    """name (or glob) -> the run file's MetricRecord (what ``define_metric`` wrote)."""
    out = {}
    for rec in wandb_records.read_records(run_file):
        if rec.WhichOneof("record_type") == "metric":
            out[rec.metric.name or rec.metric.glob_name] = rec.metric
    return out


def test_all_ranks_metrics_sum_every_rank():
    """Two ranks' batches: padding is of their union, throughput uses the slowest rank's step time."""
    from speech_ed.training.callbacks import all_ranks_metrics, batch_totals

    def batch(audio_lens, s, token_lens, u):
        return {"audio": torch.zeros(len(audio_lens), s), "audio_lens": torch.tensor(audio_lens),
                "tokens": torch.zeros(len(token_lens), u), "token_lens": torch.tensor(token_lens)}

    rank0 = batch([16000, 8000], 16000, [5, 3], 5)  # 8000 of 32000 samples padded, 2 of 10 tokens
    rank1 = batch([32000], 32000, [10], 10)  # no padding
    rows = torch.stack([torch.cat([batch_totals(b), torch.tensor([dt], dtype=torch.float64)])
                        for b, dt in ((rank0, 0.5), (rank1, 2.0))])
    got = all_ranks_metrics(batch_totals(rank0), 0.5, 16000, gather=lambda x: rows)
    assert got["train/all_ranks/batch_size"] == 3
    assert got["train/all_ranks/input_padding"] == pytest.approx(8000 / 64000)
    assert got["train/all_ranks/output_padding"] == pytest.approx(2 / 20)
    assert got["train/all_ranks/audio_seconds"] == pytest.approx(3.5)
    assert got["train/all_ranks/audio_s_per_s"] == pytest.approx(3.5 / 2.0)  # the slowest rank's step
    assert got["train/all_ranks/tokens_per_s"] == pytest.approx(18 / 2.0)
    first = all_ranks_metrics(batch_totals(rank0), None, 16000)
    assert "train/all_ranks/audio_s_per_s" not in first and first["train/all_ranks/batch_size"] == 2


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


def test_padding_workspace_spec_reads_only_logged_metrics(tmp_path, small_cuts, tokenizer, no_account):
    """`speech-ed wandb-workspace` writes the comparison; every panel's metric is in real offline runs."""
    from speech_ed.cli import main as cli_main
    from speech_ed.evaluation.wandb_workspace import missing_metrics

    small_cuts.to_file(tmp_path / "cuts.jsonl.gz")
    assert cli_main(["padding-report", "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--tokenizer",
                     str(tokenizer.model_path), "--strategy", "random", "2d", "--max-duration-s", "1.5",
                     "--num-buckets", "2", "--sub-buckets", "2", "--no-cache", "--wandb", "--wandb-group", "cmp",
                     "--wandb-dir", str(tmp_path)]) == 0
    padding_keys = set()
    for path in wandb_records.offline_runs(tmp_path):
        padding_keys |= {k for row in wandb_records.history(path) for k in row}
        padding_keys |= set(summary_keys(path))
    man = tmp_path / "manifests"
    man.mkdir()
    for split in ("train", "dev", "test"):
        small_cuts.to_file(man / f"cuts_{split}.jsonl.gz")
    save_bucket_bins(tmp_path / "bins.yaml", BucketBins(durations=[0.45, 0.7], tokens=[100, 100]))
    cfg = load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}/exp", "run=ws", f"data.manifest_dir={man}",
                           f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                           "prepare.languages=[es,it]", "data.sampler=2d",
                           f"data.bucket_bins={tmp_path}/bins.yaml", "data.max_duration_s=1.5",
                           "data.max_utterance_s=1.0", "data.num_workers=0", "trainer.max_steps=3",
                           "optim.warmup_steps=1", "trainer.accelerator=cpu", "trainer.devices=1",
                           "trainer.log_every_n_steps=1", "trainer.logger=wandb"])
    train(cfg)
    (run_file,) = wandb_records.offline_runs(cfg.run_dir)
    training_keys = {k for row in wandb_records.history(run_file) for k in row}

    out = tmp_path / "ws.json"
    assert cli_main(["wandb-workspace", "--project", "speech_ed", "--padding-group", "cmp", "--training-runs",
                     "espeak_multilingual/ws", "--out", str(out)]) == 0
    spec = json.loads(out.read_text())
    assert [s["key"] for s in spec["sections"]] == ["padding", "training"]
    assert spec["sections"][0]["runset"]["filters"]["group"] == "cmp"
    assert spec["sections"][1]["runset"]["filters"]["display_name_in"] == ["espeak_multilingual/ws"]
    assert missing_metrics(spec, {"padding": padding_keys, "training": training_keys}) == {}
    assert missing_metrics(spec, {"padding": padding_keys, "training": set()})["training"]  # the check can fail


def summary_keys(run_file) -> list[str]:
    keys = []
    for rec in wandb_records.read_records(run_file):
        if rec.WhichOneof("record_type") == "summary":
            keys += [item.key or "/".join(item.nested_key) for item in rec.summary.update]
    return keys


DDP_WORKER = '''
import json, sys
from pathlib import Path

import lightning as L

from speech_ed.config import load_config
from speech_ed.training.train import train

out = Path(sys.argv[1])


class Recorder(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({"step": trainer.global_step, "b": int(batch["audio"].shape[0]),
                           "samples": int(batch["audio_lens"].sum()), "slots": int(batch["audio"].numel()),
                           "tokens": int(batch["token_lens"].sum()), "token_slots": int(batch["tokens"].numel())})

    def on_train_end(self, trainer, pl_module):
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


train(load_config([], sys.argv[2:]), callbacks=(Recorder(),))
'''


@pytest.mark.slow
def test_ddp_padding_and_batch_size_are_summed_over_ranks(tmp_path, tokenizer, no_account):
    """Two CPU processes (torchrun, gloo): rank 0's W&B run logs padding and batch size of both ranks' batches."""
    import os
    import subprocess

    from tests.test_ddp import TORCHRUN, _corpus

    if not TORCHRUN.is_file():
        pytest.skip("torchrun is not installed")
    man, bins_path, _ = _corpus(tmp_path, tokenizer)
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    out = tmp_path / "ranks"
    out.mkdir()
    overrides = ["model_preset=tiny", f"exp_dir={tmp_path}/exp", "run=ddpwb", f"data.manifest_dir={man}",
                 f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                 "prepare.languages=[es,it]", "data.sampler=2d", f"data.bucket_bins={bins_path}",
                 "data.max_duration_s=2.0", "data.max_utterance_s=1.5", "data.num_workers=0",
                 "data.sortagrad=false", "trainer.max_steps=4", "optim.warmup_steps=1",
                 "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                 "trainer.precision=32-true", "trainer.num_threads=1", "trainer.log_every_n_steps=1",
                 "trainer.checkpoint_every_n_steps=100", "trainer.logger=wandb"]
    cmd = [str(TORCHRUN), "--standalone", "--nnodes=1", "--nproc_per_node=2", str(tmp_path / "worker.py"),
           str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    (run_file,) = wandb_records.offline_runs(tmp_path / "exp" / "espeak_multilingual" / "ddpwb")
    rows = wandb_records.history(run_file)
    assert len(rows) == 4
    for row, s0, s1 in zip(rows, *ranks):
        assert row["train/batch_size"] == s0["b"]  # the rank-0 metric
        assert row["train/all_ranks/batch_size"] == s0["b"] + s1["b"]
        slots, samples = s0["slots"] + s1["slots"], s0["samples"] + s1["samples"]
        assert row["train/all_ranks/input_padding"] == pytest.approx(1 - samples / slots)
        token_slots, tokens = s0["token_slots"] + s1["token_slots"], s0["tokens"] + s1["tokens"]
        assert row["train/all_ranks/output_padding"] == pytest.approx(1 - tokens / token_slots)
