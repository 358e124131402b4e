"""Training inputs: Lhotse Shar directories and NeMo manifests, mixed by weight, resumable, counted per corpus."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet

from speech_ed.data.dataset import AEDDataset
from speech_ed.data.sources import InputSpec, detect_format, open_source, open_sources, resolve_audio
from speech_ed.sampling import BucketingSampler
from tests.conftest import TEXTS, make_cut


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A 3-shard Shar directory of 120 Spanish cuts and a NeMo manifest of 60 lines: 57 Italian utterances, an
    empty transcript, a French line (no prompt token) and an Italian -> Spanish translation."""
    root = tmp_path_factory.mktemp("corpora")
    audio = root / "audio"
    audio.mkdir()
    es = CutSet.from_cuts(make_cut(audio, f"es-{i:03d}", TEXTS["es"][i % 4], "es", duration=0.3 + 0.01 * (i % 50))
                          for i in range(120))
    shar = root / "shar"
    shar.mkdir()
    es.to_shar(shar, fields={"recording": "flac"}, shard_size=40)
    lines = []
    for i in range(57):
        cut = make_cut(audio, f"it-{i:03d}", TEXTS["it"][i % 4], "it", duration=0.3 + 0.01 * (i % 40))
        lines.append({"audio_filepath": f"audio/it-{i:03d}.wav", "duration": cut.duration,
                      "text": TEXTS["it"][i % 4], "lang": "it"})
    make_cut(audio, "fr-000", "bonjour", "it", duration=0.4)
    lines += [{"audio_filepath": "audio/it-000.wav", "duration": 0.3, "text": " ", "lang": "it"},
              {"audio_filepath": "audio/fr-000.wav", "duration": 0.4, "text": "bonjour", "lang": "fr"},
              {"audio_filepath": "audio/it-001.wav", "duration": 0.31, "text": "ciao come stai oggi",
               "source_lang": "it", "target_lang": "es", "taskname": "ast", "answer": "hola que tal estas"}]
    nemo = root / "nemo.json"
    nemo.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, shar, nemo, es


def test_formats_are_detected(corpora):
    root, shar, nemo, _ = corpora
    assert detect_format(shar) == "shar" and detect_format(nemo) == "nemo"


def test_shar_cuts_and_audio_equal_lhotse_from_shar(corpora, tokenizer, tmp_path):
    _, shar, _, _ = corpora
    src = open_source(InputSpec(str(shar)), tokenizer, tmp_path / "cache", num_workers=0)
    assert len(src.index) == 120 and src.index.skipped() == {}
    reader = src.reader()
    ours = [resolve_audio(src.materialise(reader.get(i))) for i in range(len(src.index))]
    theirs = list(CutSet.from_shar(in_dir=shar))
    assert [c.id for c in ours] == [c.id for c in theirs]
    for a, b in zip(ours, theirs):
        assert a.duration == b.duration and a.supervisions[0].text == b.supervisions[0].text
        np.testing.assert_array_equal(a.load_audio(), b.load_audio())
    # the index is cached: a second open reads no manifest line
    again = open_source(InputSpec(str(shar)), tokenizer, tmp_path / "cache", num_workers=0)
    np.testing.assert_array_equal(again.index.extra["tar_offset"], src.index.extra["tar_offset"])


def test_nemo_lines_become_cuts_with_their_language_and_task(corpora, tokenizer, tmp_path):
    _, _, nemo, _ = corpora
    src = open_source(InputSpec(str(nemo)), tokenizer, tmp_path / "cache", num_workers=0)
    assert src.index.skipped() == {"empty_transcript": 1, "unknown_language": 1}
    reader = src.reader()
    first = resolve_audio(src.materialise(reader.get(0)))
    assert first.supervisions[0].language == "it" and first.load_audio().shape[1] == round(first.duration * 16000)
    translated = src.materialise(reader.get(59))
    sup = translated.supervisions[0]
    assert sup.custom["task"] == "translate" and sup.custom["translation"] == "hola que tal estas"
    assert sup.custom["target_language"] == "es" and sup.text == "ciao come stai oggi"
    assert src.index.tokens[59] > 0


def _mix_sampler(corpora, tokenizer, tmp_path, **kw):
    _, shar, nemo, _ = corpora
    sources = open_sources([InputSpec(str(shar), name="es_shar"), InputSpec(str(nemo), name="it_nemo")],
                           tokenizer, tmp_path / "cache", num_workers=0)
    return BucketingSampler(sources=sources, weights=[3.0, 1.0], cuts_per_epoch=240, strategy="random",
                            max_duration_s=6.0, seed=11, **kw)


def _ids(sampler, epoch):
    sampler.set_epoch(epoch)
    return [[c.id for c in batch] for batch in sampler]


def test_weighted_mix_draws_the_weights_everywhere_in_the_epoch(corpora, tokenizer, tmp_path):
    sampler = _mix_sampler(corpora, tokenizer, tmp_path)
    stats = sampler.corpus_stats()
    assert stats["es_shar"]["epoch_cuts"] == 180 and stats["it_nemo"]["epoch_cuts"] == 60
    assert stats["it_nemo"]["skipped"] == {"empty_transcript": 1, "unknown_language": 1}
    batches = _ids(sampler, 0)
    drawn = [i for b in batches for i in b]
    by_corpus = Counter("shar" if i.startswith("es-") else "nemo" for i in drawn)
    assert by_corpus == {"shar": 180, "nemo": 58}  # the weights, less the two counted skips
    first_half = Counter(i.startswith("es-") for i in drawn[: len(drawn) // 2])
    assert abs(first_half[True] / sum(first_half.values()) - 0.75) < 0.1  # mixed throughout, not in blocks
    # 120 Shar cuts at 180 a epoch: every cut once, 60 twice; the next epoch continues where this one ended
    es_counts = Counter(i for i in drawn if i.startswith("es-"))
    assert len(es_counts) == 120 and sorted(Counter(es_counts.values()).items()) == [(1, 60), (2, 60)]
    again = Counter(i for b in _ids(sampler, 1) for i in b if i.startswith("es-"))
    assert all(es_counts[k] + again[k] == 3 for k in es_counts)  # 360 draws over two epochs: 3 each


def test_resume_inside_the_mix_is_exact(corpora, tokenizer, tmp_path):
    full = _ids(_mix_sampler(corpora, tokenizer, tmp_path), 0)
    first = _mix_sampler(corpora, tokenizer, tmp_path)
    first.set_epoch(0)
    it = iter(first)
    head = [[c.id for c in next(it)] for _ in range(7)]
    resumed = _mix_sampler(corpora, tokenizer, tmp_path)
    resumed.load_state_dict(first.state_dict())
    assert head + [[c.id for c in b] for b in resumed] == full
    changed = BucketingSampler(sources=resumed.sources, weights=[1.0, 1.0], cuts_per_epoch=240,
                               strategy="random", max_duration_s=6.0, seed=11)
    with pytest.raises(ValueError, match="resume with the same inputs and weights"):
        changed.load_state_dict(first.state_dict())


def test_dataset_reads_audio_from_tar_shards_and_nemo_files(corpora, tokenizer, tmp_path):
    sampler = _mix_sampler(corpora, tokenizer, tmp_path)
    dataset = AEDDataset(tokenizer)
    batches = [dataset[b] for b in list(iter(sampler))[:6]]
    assert all(not b["skipped"] for b in batches)
    assert sum(len(b["cut_ids"]) for b in batches) > 20
    assert all(b["audio"].shape[0] == len(b["cut_ids"]) and b["audio"].abs().max() > 0 for b in batches)


@pytest.mark.slow
def test_training_on_a_shar_and_nemo_mix_reports_each_corpus(corpora, tokenizer, tmp_path):
    from speech_ed.config import load_config
    from speech_ed.training.train import train

    root, shar, nemo, es = corpora
    manifests = tmp_path / "man"
    manifests.mkdir()
    for split in ("dev", "test"):
        es.subset(first=4).to_file(manifests / f"cuts_{split}.jsonl.gz")
    inputs = f"[{{path: {shar}, weight: 2}}, {{path: {nemo}, weight: 1, name: it_nemo}}]"
    cfg = load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}/exp", f"data.manifest_dir={manifests}",
                           f"data.inputs={inputs}", f"tokenizer.path={tokenizer.model_path}",
                           "tokenizer.languages=[en,es,it]", "prepare.languages=[es,it]", "trainer.max_steps=3",
                           "optim.warmup_steps=1", "trainer.accelerator=cpu", "trainer.devices=1",
                           "trainer.precision=32-true", "data.sampler=random", "data.max_duration_s=4", "data.max_utterance_s=2",
                           "data.num_workers=0"])
    train(cfg)
    stats = json.loads((cfg.run_dir / "train_stats.json").read_text())
    corpora_stats = stats["corpora"]
    assert set(corpora_stats) == {"shar", "it_nemo"}
    assert corpora_stats["shar"]["epoch_cuts"] == 2 * corpora_stats["it_nemo"]["epoch_cuts"]
    assert corpora_stats["it_nemo"]["skipped"] == {"empty_transcript": 1, "unknown_language": 1}
    assert stats["skipped_before_sampling"] == {"empty_transcript": 1, "unknown_language": 1}
    assert Path(cfg.run_dir / "index_cache").is_dir()


def test_estimate_bins_over_the_weighted_mix(corpora, tokenizer, tmp_path):
    """`speech-ed estimate-bins --config`: bins over one epoch of the mix, each input drawn by its weight."""
    import yaml

    from speech_ed.cli import main as cli

    _, shar, nemo, _ = corpora
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump({
        "exp_dir": str(tmp_path / "exp"), "tokenizer": {"path": str(tokenizer.model_path),
                                                        "languages": ["en", "es", "it"]},
        "prepare": {"languages": ["es", "it"]},
        "data": {"sampler": "2d", "bucket_bins": str(tmp_path / "bins.yaml"), "cuts_per_epoch": 240,
                 "max_utterance_s": 2.0, "inputs": [{"path": str(shar), "weight": 3.0},
                                                   {"path": str(nemo), "weight": 1.0}]}}))
    assert cli(["estimate-bins", "--config", str(config), "--num-buckets", "3", "--sub-buckets", "2",
                "--out", str(tmp_path / "bins.yaml"), "data.seed=1"]) == 0
    meta = yaml.safe_load((tmp_path / "bins.yaml").read_text())
    assert [(i["name"], i["epoch_cuts"]) for i in meta["inputs"]] == [("shar", 180), ("nemo", 60)]
    assert meta["num_cuts"] == 238 and meta["skipped"] == {"empty_transcript": 1, "unknown_language": 1}
    assert cli(["estimate-bins", "--num-buckets", "3", "--out", str(tmp_path / "x.yaml")]) == 2  # neither input
