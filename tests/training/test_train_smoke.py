"""Train a tiny model for a few steps on generated cuts, export model.pt, evaluate, and check what was logged."""

import csv
import json

from speech_ed.config import load_config
from speech_ed.evaluation.evaluate import evaluate_split as evaluate
from speech_ed.training.train import train


def _write_run(tmp_path, small_cuts, tokenizer, extra=()):
    man = tmp_path / "manifests"
    man.mkdir()
    for split in ("train", "dev", "test"):
        small_cuts.to_file(man / f"cuts_{split}.jsonl.gz")
    return load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}/exp", "run=smoke", f"data.manifest_dir={man}",
                            f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                            "prepare.languages=[es,it]", "trainer.max_steps=4", "optim.warmup_steps=2",
                            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.log_every_n_steps=1",
                            "data.max_duration_s=30", "data.max_utterance_s=20", "data.num_workers=0",
                            "trainer.checkpoint_every_n_steps=2", "data.num_buckets=2", *extra])


def test_train_logs_padding_and_exports_model(tmp_path, small_cuts, tokenizer):
    cfg = _write_run(tmp_path, small_cuts, tokenizer)
    model_path = train(cfg)
    assert model_path.is_file()
    run = cfg.run_dir
    assert (run / "config.resolved.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["global_step"] == 4
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    logged = {k for r in rows for k, v in r.items() if v != ""}
    for key in ("train/input_padding", "train/output_padding", "train/batch_size", "train/audio_s_per_s",
                "train/lr", "train/loss"):
        assert key in logged, key
    pads = [float(r["train/input_padding"]) for r in rows if r.get("train/input_padding")]
    assert all(0.0 <= p < 1.0 for p in pads)

    results = evaluate(cfg)
    assert results["num_utterances"] == len(small_cuts)
    assert set(results["wer"]["per_language"]) == {"es", "it"}
    assert results["rtfx"] > 0
    assert (run / "RESULTS.md").read_text().startswith("# Results")


def test_transcribe_files_wav_flac_and_bad_files(tmp_path, small_cuts, tokenizer, capsys):
    import numpy as np
    import soundfile as sf

    from speech_ed.cli import main as cli_main

    cfg = _write_run(tmp_path, small_cuts, tokenizer, ["trainer.max_steps=2", "optim.warmup_steps=1"])
    model_path = train(cfg)
    tone = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    sf.write(tmp_path / "a.wav", tone, 16000)
    sf.write(tmp_path / "b.flac", tone, 8000)  # another rate: resampled
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    files = [str(tmp_path / n) for n in ("a.wav", "bad.wav", "b.flac", "empty.wav", "missing.wav")]
    capsys.readouterr()
    rc = cli_main(["transcribe", "--ckpt", str(model_path), "--language", "es", *files])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1  # some files failed
    assert [line.split("\t")[0] for line in lines] == files  # one line per file, in order
    status = ["ERROR" in line for line in lines]
    assert status == [False, True, False, True, True]
