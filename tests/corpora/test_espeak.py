"""The espeak-ng corpus: real synthesis of a few utterances, manifests, drop counts, idempotent reruns."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, load_manifest

from speech_ed.corpora import espeak as ec
from speech_ed.corpora.fortunes import FORTUNES_ROOT
from speech_ed.data.text import normalize_text

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
needs_fortunes = pytest.mark.skipif(not all((FORTUNES_ROOT / lang).is_dir() for lang in ("es", "it")),
                                    reason="fortunes-es / fortunes-it not installed")
BACKENDS = ["command"] + (["library"] if ec.find_espeak_library() else [])


def synthesize_in_child(backend, utterances, min_s=0.0, max_s=60.0):
    """Run one shard in a fresh forked process, as prepare does (libespeak-ng never loads in pytest)."""
    with mp.get_context("fork").Pool(1) as pool:
        return pool.apply(ec._synthesize_shard, ((backend, utterances, min_s, max_s),))


def utterance(tmp_path, cut_id, text, voice="it+m3", speed=160, pitch=50):
    return ec.Utterance(cut_id, "test", "it", text, voice, speed, pitch, str(tmp_path / f"{cut_id}.wav"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    paths = ec.prepare_espeak_corpus(out, languages=("es", "it"), num_train=3, num_dev=3, num_test=3,
                                     num_workers=2)
    return out, paths


@needs_fortunes
def test_manifests_are_valid_and_audio_matches(corpus):
    out, paths = corpus
    assert set(paths) == {"train", "dev", "test"}
    all_ids, punctuated = [], 0
    for split, path in paths.items():
        cuts = CutSet.from_file(path)
        assert len(load_manifest(out / f"recordings_{split}.jsonl.gz")) == len(cuts) == 6
        assert len(load_manifest(out / f"supervisions_{split}.jsonl.gz")) == 6
        assert sorted(c.supervisions[0].language for c in cuts) == ["es"] * 3 + ["it"] * 3
        for cut in cuts:
            sup = cut.supervisions[0]
            assert cut.id == sup.id == cut.recording.id and cut.id.split("-")[1] == split
            assert sup.custom == {"task": "transcribe"} and not sup.text.startswith("-")
            assert any(ch.isupper() for ch in sup.text)  # cased, as spoken
            punctuated += sup.text[-1] in ".!?\u2026"
            voice, speed, pitch = sup.speaker.split("_")
            assert voice.split("+")[1] in ec.VARIANTS
            assert 140 <= int(speed[1:]) <= 190 and 30 <= int(pitch[1:]) <= 70
            audio = cut.load_audio()
            assert audio.shape == (1, cut.recording.num_samples) and cut.sampling_rate == 16000
            info = sf.info(cut.recording.sources[0].source)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == audio.shape[1]
            assert cut.duration == pytest.approx(audio.shape[1] / 16000) and 0.5 <= cut.duration <= 20.0
            assert np.abs(audio).max() > 0.05  # speech, not silence
            all_ids.append(cut.id)
    assert len(set(all_ids)) == len(all_ids) == 18 and punctuated >= 9


@needs_fortunes
def test_no_sentence_in_two_splits_and_stats(corpus):
    out, paths = corpus
    texts = {split: {normalize_text(c.supervisions[0].text) for c in CutSet.from_file(path)}
             for split, path in paths.items()}
    assert not (texts["train"] & texts["dev"]) and not (texts["train"] & texts["test"])
    assert not (texts["dev"] & texts["test"])
    stats = json.loads((out / "prepare_stats.json").read_text())
    for split in ("train", "dev", "test"):
        for lang in ("es", "it"):
            row = stats["splits"][split][lang]
            assert row["planned"] == 3 == row["kept"] + row["failed"] + row["too_short"] + row["too_long"]
    assert stats["sentences"]["es"]["kept"] > 5000 and stats["args"]["languages"] == ["es", "it"]


@needs_fortunes
def test_rerun_with_same_arguments_does_not_regenerate(corpus, capsys):
    out, paths = corpus
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = ec.prepare_espeak_corpus(out, languages=("es", "it"), num_train=3, num_dev=3, num_test=3,
                                     num_workers=1)  # the output does not depend on num_workers
    assert again == paths and "already prepared" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dash_is_spoken_and_drops_are_counted(tmp_path, backend):
    shard = [utterance(tmp_path, "dash", "- Lei parla cinese, signora?"),
             utterance(tmp_path, "novoice", "Questa voce non esiste affatto.", voice="xx-nowhere+m1"),
             utterance(tmp_path, "short", "Sì."),
             utterance(tmp_path, "long", " ".join(["Parliamo ancora un poco di questo e di quello."] * 6))]
    results = {cut_id: (status, n) for cut_id, status, n, _ in synthesize_in_child(backend, shard, 0.7, 10.0)}
    assert {k: v[0] for k, v in results.items()} == {"dash": "ok", "novoice": "failed", "short": "too_short",
                                                    "long": "too_long"}
    audio, sr = sf.read(tmp_path / "dash.wav", dtype="int16")
    assert sr == 16000 and len(audio) == results["dash"][1] > 16000
    assert not (tmp_path / "short.wav").exists() and not (tmp_path / "long.wav").exists()


@pytest.mark.skipif(len(BACKENDS) < 2, reason="libespeak-ng cannot be loaded")
def test_library_matches_the_command_and_is_deterministic(tmp_path):
    specs = [("a", "- Buongiorno a tutti, come state?", "it+f2", 177, 63),
             ("b", "Il gatto dorme sul divano.", "it+m7", 140, 30),
             ("c", "La casa è grande e bianca.", "es-419+f4", 190, 70)]
    runs = {}
    for run, backend in (("cmd", "command"), ("lib1", "library"), ("lib2", "library")):
        shard = [utterance(tmp_path / run, *spec) for spec in specs]
        synthesize_in_child(backend, shard)
        runs[run] = [sf.read(u.path, dtype="int16")[0] for u in shard]
    assert np.array_equal(runs["lib1"][0], runs["cmd"][0])  # a fresh process speaks exactly as the CLI
    assert all(np.array_equal(x, y) for x, y in zip(runs["lib1"], runs["lib2"]))  # same shard, same audio
    assert all(abs(len(x) - len(y)) < 0.05 * len(y) for x, y in zip(runs["lib1"], runs["cmd"]))


def test_fake_sentences_end_to_end_drops_reruns_and_workers(tmp_path, monkeypatch):
    sentences = ["Hola amigo, ¿cómo estás hoy por la mañana?", "Sí.", "El perro come pan en la cocina.",
                 "La casa de mi madre es muy grande.",
                 " ".join(["Vamos a la playa con todos los amigos."] * 8),
                 "Me gusta el café con leche caliente.", "¿Dónde está la estación de tren?",
                 "- Mañana vamos al cine con Pedro.", "El libro está encima de la mesa."]
    monkeypatch.setattr(ec, "load_sentences", lambda lang: (list(sentences), {"kept": len(sentences)}))
    monkeypatch.setattr(ec, "SHARD_SIZE", 2)
    kwargs = dict(languages=("es",), num_train=3, num_dev=3, num_test=3, min_duration_s=1.2,
                  max_duration_s=12.0)
    paths = ec.prepare_espeak_corpus(tmp_path / "w2", num_workers=2, **kwargs)
    stats = json.loads((tmp_path / "w2" / "prepare_stats.json").read_text())
    rows = [stats["splits"][s]["es"] for s in ("train", "dev", "test")]
    assert sum(r["too_short"] for r in rows) == 1 and sum(r["too_long"] for r in rows) == 1
    kept = sum(len(CutSet.from_file(p)) for p in paths.values())
    assert kept == sum(r["kept"] for r in rows) == 7 and len(stats["dropped_examples"]) == 2
    spoken = {c.supervisions[0].text for p in paths.values() for c in CutSet.from_file(p)}
    assert "- Mañana vamos al cine con Pedro." in spoken  # the leading dash reached espeak-ng and was spoken
    # one worker, other shard scheduling: bit-identical audio
    ec.prepare_espeak_corpus(tmp_path / "w1", num_workers=1, **kwargs)
    for wav in (tmp_path / "w2" / "audio").rglob("*.wav"):
        other = tmp_path / "w1" / wav.relative_to(tmp_path / "w2")
        assert wav.read_bytes() == other.read_bytes()
    # other arguments regenerate; all-dropped splits are an error, and no stats claim the run is done
    with pytest.raises(RuntimeError, match="all 3 utterances dropped"):
        ec.prepare_espeak_corpus(tmp_path / "w2", num_workers=2,
                                 **{**kwargs, "min_duration_s": 0.1, "max_duration_s": 0.2})
    assert not (tmp_path / "w2" / "prepare_stats.json").exists()
