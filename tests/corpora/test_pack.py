"""``speech-ed pack-run``: a self-contained subset of a prepared run under a size cap, readable from relative paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from lhotse import CutSet

from speech_ed.cli import main as cli_main
from speech_ed.corpora.pack import pack_run
from tests.conftest import TEXTS, make_cut


def _prepared(root, tokenizer, n=3):
    run = root / "exp" / "r" / "run"
    (run / "manifests").mkdir(parents=True)
    (run / "tokenizer").mkdir()
    for name in ("tokenizer.model", "tokenizer.json"):
        (run / "tokenizer" / name).write_bytes((tokenizer.model_path.parent / name).read_bytes())
    cuts = [make_cut(root, f"{lang}-{k}-{i}", text, lang, duration=0.5 + 0.1 * i)
            for k in range(n) for lang, texts in TEXTS.items() for i, text in enumerate(texts)]
    CutSet.from_cuts(cuts[2:]).to_file(run / "manifests" / "cuts_train.jsonl.gz")
    CutSet.from_cuts(cuts[:2]).to_file(run / "manifests" / "cuts_dev.jsonl.gz")
    (run / "bucket_bins.yaml").write_text(yaml.safe_dump({"bins": [[1.0, 10]]}))
    return run, cuts


def test_pack_caps_size_and_reads_back_from_relative_paths(tmp_path, tokenizer, monkeypatch, capsys):
    run, cuts = _prepared(tmp_path, tokenizer)
    monkeypatch.chdir(tmp_path)
    # one unreadable training cut: counted and skipped
    broken = make_cut(tmp_path, "broken", "hola", "es", write=False)
    train = list(CutSet.from_file(run / "manifests" / "cuts_train.jsonl.gz")) + [broken]
    CutSet.from_cuts(train).to_file(run / "manifests" / "cuts_train.jsonl.gz")
    full = pack_run(run, Path("kit"), max_mib=100, dev_cuts=0)
    assert full["cuts"] == {"dev": 2, "train": len(train) - 1} and full["skipped_unreadable"] == 1
    one_cut = (tmp_path / "kit" / "audio" / "train").iterdir().__next__().stat().st_size
    capped = pack_run(run, Path("kit2"), max_mib=(3.5 * one_cut + 2 * 20000) / 2**20,
                      dev_cuts=1)
    assert capped["cuts"]["dev"] == 1 and 1 <= capped["cuts"]["train"] < len(train) - 1
    sizes = sum(p.stat().st_size for p in (tmp_path / "kit2" / "audio").rglob("*.flac"))
    assert sizes <= capped["max_mib"] * 2**20 and capped["audio_mib"] == round(sizes / 2**20, 2)
    originals = {c.id: c for c in cuts}
    packed = list(CutSet.from_file(tmp_path / "kit" / "manifests" / "cuts_train.jsonl.gz"))
    for c in packed:
        source = c.recording.sources[0].source
        assert not source.startswith("/") and source.startswith("kit/audio/train/")
        np.testing.assert_allclose(c.load_audio(), originals[c.id].load_audio(), atol=1 / 32768)
        assert c.supervisions[0].text == originals[c.id].supervisions[0].text
    assert (tmp_path / "kit" / "tokenizer" / "tokenizer.model").is_file()
    assert (tmp_path / "kit" / "bucket_bins.yaml").read_text() == (run / "bucket_bins.yaml").read_text()
    assert json.loads((tmp_path / "kit" / "pack.json").read_text())["overrides"][0] == "data.manifest_dir=kit/manifests"


def test_pack_errors_are_clear(tmp_path, tokenizer, capsys):
    assert cli_main(["pack-run", "--run-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "k")]) == 1
    assert "is not a prepared run" in capsys.readouterr().out
    run, _ = _prepared(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="dev cuts alone pass"):
        pack_run(run, tmp_path / "k", max_mib=1e-4)


def test_ogg_packs_smaller_and_reads_back(tmp_path, tokenizer, monkeypatch):
    run, cuts = _prepared(tmp_path, tokenizer)
    monkeypatch.chdir(tmp_path)
    flac = pack_run(run, Path("f"), max_mib=100, fmt="flac")
    ogg = pack_run(run, Path("o"), max_mib=100, fmt="ogg")
    assert ogg["cuts"] == flac["cuts"]  # (Ogg headers make it larger than FLAC for these 0.5 s tones)
    packed = list(CutSet.from_file(tmp_path / "o" / "manifests" / "cuts_train.jsonl.gz"))
    assert packed[0].recording.sources[0].source.endswith(".ogg")
    assert packed[0].load_audio().shape == next(c for c in cuts if c.id == packed[0].id).load_audio().shape

