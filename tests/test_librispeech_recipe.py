"""The LibriSpeech recipe on a generated corpus laid out exactly like LibriSpeech, through `make recipe`.

The corpus is spoken by espeak-ng (speaker/chapter folders, flac files, ``*.trans.txt``), so lhotse's real
``prepare_librispeech`` parses it. Nothing is downloaded: the no-data test replaces the network check.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speech_ed.config import ConfigError
from speech_ed.recipe import load_recipe

sys.path.insert(0, str(Path(__file__).parent))
import wandb_records

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "manifests", "tokenizer", "bins", "batch_sizes", "train", "evaluate")
TINY = ["model_preset=tiny", "prepare.train_parts=[train-clean-100]", "prepare.dev_parts=[dev-clean]",
        "prepare.test_parts=[test-clean]", "prepare.num_workers=1", "tokenizer.vocab_size=80",
        "data.num_buckets=2", "data.num_sub_buckets=2", "data.num_workers=0", "data.max_duration_s=30",
        "data.max_utterance_s=20", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
        "trainer.max_steps=3", "optim.warmup_steps=1", "trainer.val_every_n_steps=0",
        "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=2", "oomptimize.probe=simulate",
        "oomptimize.memory_budget_gib=0.05", "eval.batch_size=8"]

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def fake_librispeech(tmp_path_factory) -> Path:
    from speech_ed.corpora.fake_librispeech import make_fake_librispeech

    root = tmp_path_factory.mktemp("fake_librispeech")
    make_fake_librispeech(root, {"train-clean-100": 24, "dev-clean": 4, "test-clean": 4}, num_workers=2)
    return root


@needs_espeak
def test_fake_corpus_has_librispeech_layout(fake_librispeech):
    import soundfile as sf

    part = fake_librispeech / "LibriSpeech" / "dev-clean"
    trans = sorted(part.glob("*/*/*.trans.txt"))
    assert len(trans) == 4  # 2 speakers x 2 chapters
    for t in trans:
        spk, chap = t.parent.parent.name, t.parent.name
        assert t.name == f"{spk}-{chap}.trans.txt"
        for line in t.read_text().splitlines():
            utt, text = line.split(" ", 1)
            assert utt.startswith(f"{spk}-{chap}-") and text == text.upper() and text.strip()
            info = sf.info(t.parent / f"{utt}.flac")
            assert info.format == "FLAC" and info.samplerate == 16000 and info.channels == 1


@pytest.mark.slow
@needs_espeak
def test_make_recipe_librispeech_runs_every_stage(fake_librispeech, tmp_path):
    exp = tmp_path / "exp"
    args = " ".join([f"exp_dir={exp}", "run=fake", "trainer.logger=wandb", *TINY])
    # `-o install`: the environment is this test's own; make must not try to (re)install it.
    cmd = ["make", "-o", "install", "recipe", "RECIPE=librispeech", f"DATA_DIR={fake_librispeech}",
           f"ARGS={args}", f"VENV={sys.prefix}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for n, name in enumerate(STAGES):
        assert f"Stage {n}: {name}: done" in proc.stdout, name

    run = exp / "librispeech" / "fake"
    man = run / "manifests"
    with gzip.open(man / "cuts_train.jsonl.gz", "rt") as f:
        cuts = [json.loads(line) for line in f]
    assert len(cuts) == 24
    sup = cuts[0]["supervisions"][0]
    assert sup["language"] == "en" and sup["text"] == sup["text"].upper()
    assert cuts[0]["recording"]["sources"][0]["source"].endswith(".flac")
    stats = json.loads((man / "prepare_stats.json").read_text())["parts"]
    assert {k: v["cuts"] for k, v in stats.items()} == {"train-clean-100": 24, "dev-clean": 4,
                                                        "test-clean": 4}
    assert "probe: simulate" in (run / "bucket_batch_sizes.yaml").read_text()
    assert json.loads((run / "train_stats.json").read_text())["global_step"] == 3

    results = json.loads((run / "results.json").read_text())
    assert set(results["sets"]) == {"dev-clean", "test-clean"}
    for r in results["sets"].values():
        assert r["num_utterances"] == 4 and 0 <= r["wer"] and r["rtfx"] > 0
    assert "| test-clean | 4 |" in (run / "RESULTS.md").read_text()

    assert len(wandb_records.offline_runs(run)) == 2  # offline: no account, no network
    train_run = wandb_records.run_by_name(run, "librispeech/fake")
    eval_run = wandb_records.run_by_name(run, "librispeech/fake/eval")
    rows = wandb_records.history(train_run)
    assert [r["trainer/global_step"] for r in rows] == [0, 1, 2]
    assert all("train/input_padding" in r and "train/bucket" in r for r in rows)
    assert wandb_records.run_record(eval_run).run_group == "librispeech/fake"
    (logged,) = wandb_records.history(eval_run)
    assert logged["eval/test-clean/wer"] == results["sets"]["test-clean"]["wer"]
    assert logged["eval/test-clean/rtfx"] == results["sets"]["test-clean"]["rtfx"]


def test_without_data_or_network_stops_at_download(tmp_path, monkeypatch, capsys):
    recipe = load_recipe("librispeech")
    monkeypatch.setattr(recipe, "server_reachable", lambda *a, **k: False)  # and never touch the network
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as stop:
        recipe.main([f"exp_dir={tmp_path}", f"prepare.data_dir={data}"])
    message = str(stop.value.code)
    assert "not reachable (no network)" in message
    for part in ("train-clean-100", "train-clean-360", "train-other-500", "dev-other", "test-clean"):
        assert f"https://www.openslr.org/resources/12/{part}.tar.gz" in message
    assert f"tar -xzf <part>.tar.gz -C {data}" in message
    assert f"{data}/LibriSpeech/<part>/<speaker>/<chapter>" in message
    assert "Stage 1" not in capsys.readouterr().out
    assert not (tmp_path / "librispeech" / "default" / ".done").exists()


def test_download_disabled_names_the_setting(tmp_path):
    recipe = load_recipe("librispeech")
    (tmp_path / "LibriSpeech" / "dev-clean").mkdir(parents=True)  # an empty part folder is still missing
    with pytest.raises(SystemExit) as stop:
        recipe.main([f"exp_dir={tmp_path}", f"prepare.data_dir={tmp_path}", "prepare.download=false",
                     "prepare.train_parts=[train-clean-100]", "prepare.dev_parts=[dev-clean]",
                     "prepare.test_parts=[test-clean]"])
    message = str(stop.value.code)
    assert "prepare.download is false" in message
    assert "dev-clean, test-clean" in message and "train-other-500" not in message


@pytest.mark.parametrize("override, field", [("prepare.test_parts=[test-cleen]", "prepare.test_parts"),
                                             ("prepare.data_dir=", "prepare.data_dir"),
                                             ("oomptimize.target_gpu=h300", "oomptimize.target_gpu"),
                                             ("tokenizer.languages=[de]", "tokenizer.languages")])
def test_bad_settings_fail_before_any_stage(tmp_path, override, field, capsys):
    recipe = load_recipe("librispeech")
    extra = ["prepare.languages=[de]"] if field == "tokenizer.languages" else []
    with pytest.raises(ConfigError, match=field):
        recipe.main([f"exp_dir={tmp_path}", override, *extra])
    assert "Stage 0" not in capsys.readouterr().out
