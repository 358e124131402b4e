"""Fault injection: non-finite losses, out of memory, kills during writes, and every kind of bad input.

Each bad input is either skipped and counted (the count reaching train_stats.json and results.json) or refused
with a message naming the file, line or field. What happens to each is listed in the README, "When things go
wrong".
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet

from speech_ed.config import ConfigError, load_config
from speech_ed.data.datamodule import CountingFilter
from speech_ed.data.dataset import AEDDataset
from speech_ed.sampling import BucketBins, BucketingSampler
from speech_ed.sampling.stream import ManifestFormatError, open_manifest
from tests.conftest import TEXTS, make_cut

ROOT = Path(__file__).resolve().parents[1]


def _cuts(folder: Path) -> list:
    return [make_cut(folder, f"{lang}-{i}", text, lang, duration=0.3 + 0.1 * i)
            for lang, texts in TEXTS.items() for i, text in enumerate(texts)]


def _config(tmp_path, tokenizer, manifests: Path, extra=()):
    return load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}/exp", f"data.manifest_dir={manifests}",
                            f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                            "prepare.languages=[es,it]", "trainer.max_steps=4", "optim.warmup_steps=1",
                            "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
                            "trainer.log_every_n_steps=1", "data.sampler=random", "data.max_duration_s=3",
                            "data.max_utterance_s=2", "data.num_workers=0", *extra])


def _write_manifests(folder: Path, cuts: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        CutSet.from_cuts(cuts).to_file(folder / f"cuts_{split}.jsonl.gz")
    return folder


def _nan_on_calls(monkeypatch, calls: set | None):
    """Make ``compute_loss`` return NaN on the given 1-based calls (all calls when None)."""
    import speech_ed.training.module as module

    real, count = module.compute_loss, [0]

    def patched(*args, **kwargs):
        count[0] += 1
        loss, parts = real(*args, **kwargs)
        return (loss * float("nan") if calls is None or count[0] in calls else loss), parts

    monkeypatch.setattr(module, "compute_loss", patched)
    return count


# ------------------------------------------------------------------------------------ part 2: training faults

def test_bad_input_and_a_nan_step_are_counted_in_the_log_train_stats_and_results(tmp_path, tokenizer,
                                                                                  monkeypatch):
    from speech_ed.evaluation.evaluate import evaluate_split as evaluate
    from speech_ed.training.train import train

    audio = tmp_path / "audio"
    audio.mkdir()
    cuts = _cuts(audio)
    task = make_cut(audio, "task", "hola", "es")
    task.supervisions[0].custom["task"] = "summarize"
    cuts += [make_cut(audio, "missing", "hola", "es", write=False), make_cut(audio, "french", "bonjour", "fr"),
             make_cut(audio, "blank", "   ", "es"), make_cut(audio, "long", "hola", "es", duration=2.5), task,
             make_cut(audio, "unk", "hola 漢字", "es")]
    cfg = _config(tmp_path, tokenizer, _write_manifests(tmp_path / "man", cuts))
    steps = _nan_on_calls(monkeypatch, {2})
    train(cfg)
    stats = json.loads((cfg.run_dir / "train_stats.json").read_text())
    # the skipped batch makes no update but still counts towards trainer.max_steps
    assert steps[0] == stats["global_step"] == 4 and stats["non_finite_steps"] == 1
    assert stats["skipped_before_sampling"] == {"empty_transcript": 1, "too_long": 1, "unknown_language": 1,
                                                "unknown_task": 1}
    assert stats["skipped_at_loading"].get("unreadable_audio", 0) >= 1  # the missing file, each time drawn
    assert stats["unknown_pieces"] >= 1
    rows = list(csv.DictReader(open(cfg.run_dir / "logs" / "metrics.csv")))
    assert any(r.get("train/non_finite_steps") for r in rows)
    results = evaluate(cfg)
    assert results["train"]["non_finite_steps"] == 1
    assert results["skipped"]["unknown_task"] == 1 and results["skipped"]["unreadable_audio"] == 1
    assert json.loads((cfg.run_dir / "results.json").read_text())["train"]["unknown_pieces"] >= 1


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_consecutive_non_finite_losses_stop_with_a_clear_error(tmp_path, tokenizer, monkeypatch, bad):
    import speech_ed.training.module as module
    from speech_ed.training.module import NonFiniteLossError
    from speech_ed.training.train import train

    real = module.compute_loss
    monkeypatch.setattr(module, "compute_loss",
                        lambda *a, **k: (lambda lp: (lp[0] * float(bad), lp[1]))(real(*a, **k)))
    cfg = _config(tmp_path, tokenizer, _write_manifests(tmp_path / "man", _cuts(tmp_path)),
                  ["trainer.max_bad_steps_in_a_row=3"])
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row .*trainer.max_bad_steps_in_a_row=3"):
        train(cfg)
    assert not (cfg.run_dir / "model.pt").exists()


def test_out_of_memory_names_bucket_batch_size_and_lower_fraction(tmp_path, tokenizer, monkeypatch):
    import speech_ed.training.module as module
    from speech_ed.oomptimizer.io import model_config_hash
    from speech_ed.sampling import save_bucket_batch_sizes, save_bucket_bins
    from speech_ed.training.train import train

    bins = BucketBins([1.0, 1.0, 2.0, 2.0], [14, 40, 14, 40])
    save_bucket_bins(tmp_path / "bins.yaml", bins)
    cfg = _config(tmp_path, tokenizer, _write_manifests(tmp_path / "man", _cuts(tmp_path)),
                  ["data.sampler=2d", f"data.bucket_bins={tmp_path / 'bins.yaml'}",
                   f"data.bucket_batch_sizes={tmp_path / 'bs.yaml'}"])
    dims = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    save_bucket_batch_sizes(tmp_path / "bs.yaml", [3, 3, 2, 2], bins, model_hash=model_config_hash(dims),
                            memory_fraction=0.9, probe="cuda",
                            command="speech-ed oomptimize --probe cuda --memory-fraction 0.9 --out bs.yaml")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(module, "compute_loss", out_of_memory)
    with pytest.raises(RuntimeError, match=r"bucket \d+ \(batch size [23]\): out of memory .*"
                                           r"--memory-fraction 0.75"):
        train(cfg)


def test_batch_sizes_for_other_bins_are_refused_before_any_data_is_read(tmp_path, tokenizer):
    from speech_ed.oomptimizer.io import model_config_hash
    from speech_ed.sampling import save_bucket_batch_sizes, save_bucket_bins
    from speech_ed.training.train import train

    save_bucket_bins(tmp_path / "bins.yaml", BucketBins([1.0, 2.0, 4.0], [20, 40, 80]))
    cfg = _config(tmp_path, tokenizer, tmp_path / "no_manifests_here",
                  ["data.sampler=2d", f"data.bucket_bins={tmp_path / 'bins.yaml'}",
                   f"data.bucket_batch_sizes={tmp_path / 'bs.yaml'}"])
    dims = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    save_bucket_batch_sizes(tmp_path / "bs.yaml", [8, 4], model_hash=model_config_hash(dims))
    with pytest.raises(ValueError, match=r"bs.yaml: 2 batch sizes but the bucket bins \(.*bins.yaml\) have 3 "
                                         "buckets; regenerate"):
        train(cfg)


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    script = f"""
import os, signal, torch
from speech_ed.training.train import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"global_step": 1, "w": torch.ones(50_000)}}, {str(ckpt)!r})
def dying_save(obj, f, *args, **kwargs):
    f.write(b"PK" + b"half a checkpoint" * 10_000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
io.save_checkpoint({{"global_step": 2, "w": torch.zeros(50_000)}}, {str(ckpt)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    from speech_ed.training.train import AtomicCheckpointIO

    assert AtomicCheckpointIO().load_checkpoint(ckpt)["global_step"] == 1
    assert [p.name for p in ckpt.parent.iterdir() if not p.name.startswith(".")] == ["last.ckpt"]
    assert len(list(ckpt.parent.glob(".last.ckpt.*.tmp"))) == 1  # the half write, under another name


def test_unreadable_last_checkpoint_is_refused_not_replaced(tmp_path, tokenizer):
    from speech_ed.training.train import train

    cfg = _config(tmp_path, tokenizer, _write_manifests(tmp_path / "man", _cuts(tmp_path)))
    last = cfg.run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RuntimeError, match=r"last.ckpt cannot be read .*trainer.resume_from"):
        train(cfg)
    assert last.read_bytes() == b"PK\x03\x04 truncated"


def _writers(tmp_path):
    """(name, path, write(version)) for every artefact a later run trusts."""
    from speech_ed.atomic import atomic_write_json
    from speech_ed.config import save_config
    from speech_ed.models import AEDModel
    from speech_ed.models.checkpoint import save_model_file
    from speech_ed.sampling import import_tsv, save_bucket_batch_sizes, save_bucket_bins
    from speech_ed.training.train import AtomicCheckpointIO

    cfg = load_config([], ["model_preset=tiny"])
    dims = dataclasses.replace(cfg.model, vocab_size=30)

    def manifest(v):
        (tmp_path / "in.tsv").write_text("id\tduration_seconds\ttext\n" + "".join(
            f"u{i}\t{1 + v}.0\thola\n" for i in range(3)))
        import_tsv(tmp_path / "in.tsv", tmp_path / "cuts.jsonl.gz", language="es")

    return [
        ("manifest", "cuts.jsonl.gz", manifest),
        ("bins", "bins.yaml", lambda v: save_bucket_bins(tmp_path / "bins.yaml", BucketBins([1.0 + v, 9.0]))),
        ("batch sizes", "bs.yaml", lambda v: save_bucket_batch_sizes(tmp_path / "bs.yaml", [4 + v, 2])),
        ("results", "results.json", lambda v: atomic_write_json(tmp_path / "results.json", {"wer": v})),
        ("config", "config.yaml", lambda v: save_config(dataclasses.replace(cfg, run=f"r{v}"),
                                                         tmp_path / "config.yaml")),
        ("model", "model.pt", lambda v: save_model_file(tmp_path / "model.pt", AEDModel(dims), dims, {"v": v})),
        ("checkpoint", "last.ckpt", lambda v: AtomicCheckpointIO().save_checkpoint({"v": v}, tmp_path / "last.ckpt")),
    ]


def test_every_trusted_artefact_is_written_then_renamed(tmp_path, monkeypatch):
    """A kill after writing but before the rename (here: a failing rename) leaves the previous file intact."""
    for name, filename, write in _writers(tmp_path):
        write(0)
        before = (tmp_path / filename).read_bytes()
        with monkeypatch.context() as m:
            def killed(*args, **kwargs):
                raise KeyboardInterrupt("killed before the rename")

            m.setattr(os, "replace", killed)
            with pytest.raises(KeyboardInterrupt):
                write(1)
        assert (tmp_path / filename).read_bytes() == before, name
        write(1)
        assert (tmp_path / filename).read_bytes() != before, name


# --------------------------------------------------------------------------------------- part 3: bad input

def test_broken_audio_is_skipped_and_counted(tmp_path, tokenizer):
    good = make_cut(tmp_path, "good", "hola que tal", "es", duration=1.0)
    truncated = make_cut(tmp_path, "truncated", "hola", "es", duration=1.0)
    data = (tmp_path / "truncated.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[: len(data) // 3])
    zero = make_cut(tmp_path, "zero", "hola", "es", duration=0.5)
    sf.write(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32), 16000)  # manifest says 0.5 s
    nan = make_cut(tmp_path, "nan", "hola", "es", duration=0.5)
    sf.write(tmp_path / "nan.wav", np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    missing = make_cut(tmp_path, "missing", "hola", "es", write=False)
    corrupt = make_cut(tmp_path, "corrupt", "hola", "es")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage")
    batch = AEDDataset(tokenizer)[CutSet.from_cuts([good, truncated, zero, nan, missing, corrupt])]
    assert batch["cut_ids"] == ["good"]
    assert batch["skipped"] == {"unreadable_audio": 4, "non_finite_audio": 1}


def test_zero_length_audio_in_the_manifest_is_filtered_and_counted(tmp_path, tokenizer):
    cut = make_cut(tmp_path, "empty", "hola", "es", duration=0.5)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    from lhotse import Recording

    cut.recording = Recording.from_file(tmp_path / "empty.wav", recording_id="empty")
    cut.duration = cut.recording.duration
    f = CountingFilter(tokenizer, min_duration_s=0.1, max_duration_s=20)
    assert cut.duration == 0 and not f(cut) and f.counts == {"too_short": 1}


def test_other_sample_rates_are_resampled_not_rejected(tmp_path, tokenizer):
    cuts = [make_cut(tmp_path, f"sr{sr}", "hola", "es", duration=0.5, sr=sr) for sr in (8000, 22050, 16000)]
    batch = AEDDataset(tokenizer, sample_rate=16000)[CutSet.from_cuts(cuts)]
    assert batch["cut_ids"] == ["sr8000", "sr22050", "sr16000"] and batch["skipped"] == {}
    assert batch["audio_lens"].tolist() == [8000, 8000, 8000]


def test_unknown_characters_become_unk_and_are_counted(tmp_path, tokenizer):
    plain = make_cut(tmp_path, "plain", "hola que tal", "es")
    odd = make_cut(tmp_path, "odd", "hola 漢字 que ж tal", "es")
    batch = AEDDataset(tokenizer)[CutSet.from_cuts([plain, odd])]
    assert batch["cut_ids"] == ["plain", "odd"]
    assert batch["unk_pieces"] >= 2
    assert (batch["tokens"][1] == tokenizer.unk_id).sum().item() == batch["unk_pieces"]


def test_unknown_task_and_language_are_skipped_and_counted(tmp_path, tokenizer):
    task = make_cut(tmp_path, "task", "hola", "es")
    task.supervisions[0].custom["task"] = "summarize"
    lang = make_cut(tmp_path, "lang", "hola", "xx")
    batch = AEDDataset(tokenizer)[CutSet.from_cuts([task, lang, make_cut(tmp_path, "ok", "hola", "es")])]
    assert batch["cut_ids"] == ["ok"] and batch["skipped"] == {"unknown_task": 1, "unknown_language": 1}
    f = CountingFilter(tokenizer, min_duration_s=0.1, max_duration_s=20)
    assert not f(task) and not f(lang) and f.counts == {"unknown_language": 1, "unknown_task": 1}


def test_longer_than_the_largest_bin_and_tps_outliers_are_dropped_and_counted():
    from lhotse import MonoCut, SupervisionSegment

    def cut(cid, duration):
        sup = SupervisionSegment(id=cid, recording_id=cid, start=0, duration=duration, text="x", language="es")
        return MonoCut(id=cid, start=0, duration=duration, channel=0, supervisions=[sup])

    tokens = {"ok1": 10, "ok2": 30, "long": 10, "tps": 19}  # tps: 12.7 tokens/s in a 12/s bucket
    bins = BucketBins([2.0, 4.0], [20, 40], max_tps=[12.0, 12.0])
    cuts = CutSet.from_cuts([cut("ok1", 1.5), cut("ok2", 3.0), cut("long", 5.0), cut("tps", 1.5)])
    sampler = BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, max_duration_s=20.0)
    seen = sorted(c.id for batch in sampler for c in batch)
    assert seen == ["ok1", "ok2"]
    assert sampler.stats["dropped_too_long"] == 1 and sampler.stats["dropped_tps_outlier"] == 1


def test_a_manifest_line_that_is_not_json_names_file_and_line(tmp_path, tokenizer):
    good = [json.dumps(c.to_dict()) for c in _cuts(tmp_path)[:3]]
    path = tmp_path / "cuts_train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(good[:2] + ['{"id": "broken", "duration": '] + good[2:]) + "\n")
    with pytest.raises(ManifestFormatError, match=r"cuts_train.jsonl.gz:3: not a valid cut manifest line"):
        list(open_manifest(path))
    from speech_ed.data.datamodule import AEDDataModule

    dm = AEDDataModule(_config(tmp_path, tokenizer, tmp_path), tokenizer)
    with pytest.raises(ManifestFormatError, match=r"cuts_train.jsonl.gz:3:"):
        next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_bad_steps_in_a_row=zero"], "trainer.max_bad_steps_in_a_row"),   # wrong type
    (["trainer.max_bad_steps_in_a_row=0"], "trainer.max_bad_steps_in_a_row"),
    (["trainer.resume_form=last"], "trainer.resume_form"),                         # unknown key
    (["trainer.resume_from=/no/such.ckpt"], "trainer.resume_from: /no/such.ckpt does not exist"),
])
def test_bad_fault_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)
