"""The embedded corpus: fortune sentences spoken by espeak-ng, written as 16 kHz wavs and Lhotse manifests.

Usage::

    from speech_ed.corpora.espeak import prepare_espeak_corpus
    cuts = prepare_espeak_corpus("exp/espeak_multilingual/run0/manifests", languages=("es", "it"))
    # {"train": .../cuts_train.jsonl.gz, "dev": ..., "test": ...}

Each language's sentences (``speech_ed.corpora.fortunes``) are shuffled with the seed and cut into test, dev
and train before synthesis, so no sentence (nor its normalised label) is in two splits. Each utterance gets a
voice (base voice of the language + variant m1-m7/f1-f5), a speed (140-190 words/min) and a pitch (30-70)
drawn from the seed; test voices come from the same distribution (matched condition).

Synthesis calls libespeak-ng in-process through ctypes (backend ``library``): 2.7-5.9x the throughput of one
``espeak-ng | sox`` process pair per utterance (docs/BENCHMARKS.md). The library keeps a little state from
one utterance to the next (pause lengths, waveform phase), so utterances are synthesised in fixed
shards of ``SHARD_SIZE``, each in a freshly forked process: the first utterance of a shard is sample-identical
to the ``espeak-ng`` program, and the corpus is the same for any ``num_workers``. Backend ``command`` runs
``espeak-ng --stdout`` once per utterance (text on stdin, so a leading ``-`` is never read as an option); it
is used when the library cannot be loaded. Both resample 22.05 -> 16 kHz with a polyphase filter in-process
(no sox: one process less per utterance, and no dither, so reruns are bit-identical).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from speech_ed.atomic import atomic_write_json
from speech_ed.corpora.fortunes import load_sentences

SAMPLE_RATE = 16000
SHARD_SIZE = 200
SPLITS = ("test", "dev", "train")  # synthesis order: test and dev do not move when num_train changes
BASE_VOICES = {"en": ("en-us", "en-us", "en"), "de": ("de",), "es": ("es", "es-419"), "it": ("it",)}
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
SPEED_WPM = (140, 190)
PITCH = (30, 70)
MANIFEST_VERSION = 1
_LIBRARY_NAMES = ("espeak-ng", "libespeak-ng.so.1")


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: its cut id, split, language, text and voice settings, and where its wav goes."""

    cut_id: str
    split: str
    language: str
    text: str
    voice: str
    speed: int
    pitch: int
    path: str


def plan_utterances(out_dir: str | Path, languages: tuple[str, ...], num_train: int, num_dev: int,
                    num_test: int, seed: int) -> tuple[list[Utterance], dict]:
    """Split each language's sentences into test/dev/train and draw a voice, speed and pitch per utterance.

    Args:
        out_dir: corpus folder; wav paths are ``<out_dir>/audio/<split>/<lang>/<cut_id>.wav``, absolute.
        languages: any of 'en', 'de', 'es', 'it'.
        num_train, num_dev, num_test: sentences per language and split.
        seed: the shuffle before the split and every voice, speed and pitch draw.

    Returns:
        (utterances in synthesis order: split, then language, then index; per-language sentence counts and
        shortfalls). A language with fewer sentences than asked gets all of train that is left (counted).

    Raises:
        ValueError: an unknown language, or too few sentences for dev + test.
    """
    audio_dir = Path(out_dir).resolve() / "audio"
    per_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    info = {}
    for lang in languages:
        if lang not in BASE_VOICES:
            raise ValueError(f"languages: {lang!r} is not one of {tuple(BASE_VOICES)}")
        sentences, counts = load_sentences(lang)
        if len(sentences) < num_test + num_dev:
            raise ValueError(f"{lang}: {len(sentences)} clean sentences, fewer than num_test + num_dev = "
                             f"{num_test + num_dev}; lower them")
        order = list(range(len(sentences)))
        random.Random(f"{seed}:{lang}:split").shuffle(order)
        bounds = {"test": (0, num_test), "dev": (num_test, num_test + num_dev),
                  "train": (num_test + num_dev, min(len(order), num_test + num_dev + num_train))}
        shortfall = num_train - (bounds["train"][1] - bounds["train"][0])
        info[lang] = {"filters": counts, "train_shortfall": shortfall}
        for split in SPLITS:
            rng = random.Random(f"{seed}:{lang}:{split}:voice")
            lo, hi = bounds[split]
            for i, k in enumerate(order[lo:hi]):
                voice = f"{rng.choice(BASE_VOICES[lang])}+{rng.choice(VARIANTS)}"
                speed, pitch = rng.randint(*SPEED_WPM), rng.randint(*PITCH)
                cut_id = f"{lang}-{split}-{i:06d}"
                path = str(audio_dir / split / lang / f"{cut_id}.wav")
                text = " ".join(sentences[k].split())
                per_split[split].append(Utterance(cut_id, split, lang, text, voice, speed, pitch, path))
    return [u for s in SPLITS for u in per_split[s]], info


class EspeakLibrary:
    """libespeak-ng through ctypes, synchronous mode: text in, int16 samples at ``sample_rate`` out.

    Create it only in the process that synthesises (the library keeps state between utterances).
    """

    _RATE, _PITCH = 1, 3  # espeak_PARAMETER
    _FLAGS = 0x1 | 0x1000  # espeakCHARS_UTF8 | espeakENDPAUSE (as the CLI, without [[phoneme]] input)

    def __init__(self):
        name = find_espeak_library()
        if name is None:
            raise OSError("libespeak-ng cannot be loaded (apt-get install libespeak-ng1); use 'command'")
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # AUDIO_OUTPUT_SYNCHRONOUS, 1000 ms buffers, default data path, espeakINITIALIZE_DONT_EXIT
        self.sample_rate = self.lib.espeak_Initialize(2, 1000, None, 0x8000)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak_Initialize failed: no espeak-ng-data? (apt-get install espeak-ng)")
        self._chunks: list[bytes] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                         ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # kept alive as long as the library may call it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
        return 0

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        """Samples (S,) int16 of ``text`` read by ``voice`` (e.g. ``es+f3``) at ``speed`` wpm, ``pitch``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(self._RATE, speed, 0)
        self.lib.espeak_SetParameter(self._PITCH, pitch, 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(data, len(data), 0, 1, 0, self._FLAGS, None, None)
        if status != 0 or self.lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)


class EspeakCommand:
    """The ``espeak-ng`` program, one process per utterance, text on stdin: int16 samples out."""

    def __init__(self):
        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.sample_rate = 22050  # read back from each wav header and checked

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        """Samples (S,) int16, as ``EspeakLibrary.synthesize``."""
        run = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
                             input=text.encode("utf-8") + b"\n", capture_output=True, timeout=120)
        out = run.stdout
        if run.returncode != 0 or len(out) < 44 or out[:4] != b"RIFF" or out[8:12] != b"WAVE":
            message = run.stderr.decode(errors="replace")[:200]
            raise RuntimeError(f"espeak-ng exited {run.returncode}: {message}")
        rate = int.from_bytes(out[24:28], "little")
        if rate != self.sample_rate:
            raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {self.sample_rate}")
        # On stdout the header holds no sizes: the samples are simply everything after its 44 bytes.
        return np.frombuffer(out[44:44 + (len(out) - 44) // 2 * 2], dtype=np.int16)


def find_espeak_library() -> str | None:
    """The name ctypes loads libespeak-ng by, or None when it cannot be loaded."""
    for name in (ctypes.util.find_library("espeak-ng"), *_LIBRARY_NAMES):
        if name:
            try:
                ctypes.CDLL(name)
                return name
            except OSError:
                continue
    return None


def resample_to_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """(S,) int16 at ``sample_rate`` -> (S',) int16 at 16 kHz, polyphase Kaiser filter, no dither."""
    g = math.gcd(SAMPLE_RATE, sample_rate)
    y = resample_poly(samples.astype(np.float32), SAMPLE_RATE // g, sample_rate // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def _synthesize_shard(task: tuple[str, list[Utterance], float, float]) -> list[tuple[str, str, int, str]]:
    """Pool task: synthesise one shard in this (fresh) process -> [(cut_id, status, num_samples, message)]."""
    backend, shard, min_duration_s, max_duration_s = task
    engine = EspeakLibrary() if backend == "library" else EspeakCommand()
    results = []
    for u in shard:
        try:
            audio = resample_to_16k(engine.synthesize(u.text, u.voice, u.speed, u.pitch), engine.sample_rate)
        except Exception as e:  # noqa: BLE001 - a failed utterance is counted and reported, not fatal
            results.append((u.cut_id, "failed", 0, f"{u.cut_id} ({u.voice}): {e}"))
            continue
        duration = len(audio) / SAMPLE_RATE
        if duration < min_duration_s or duration > max_duration_s:
            status = "too_short" if duration < min_duration_s else "too_long"
            results.append((u.cut_id, status, len(audio), f"{u.cut_id}: {duration:.2f} s"))
            continue
        Path(u.path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(u.path, audio, SAMPLE_RATE, subtype="PCM_16")
        results.append((u.cut_id, "ok", len(audio), ""))
    return results


def _write_manifests(out_dir: Path, utterances: list[Utterance],
                     num_samples: dict[str, int]) -> dict[str, Path]:
    """Recordings, supervisions and cuts per split (temp name, then rename); returns the cuts paths."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource
    from lhotse.cut import MonoCut

    paths = {}
    for split in SPLITS:
        cuts = []
        for u in utterances:
            if u.split != split or u.cut_id not in num_samples:
                continue
            n = num_samples[u.cut_id]
            # Built from the known sample count: no need to open the wav again.
            rec = Recording(id=u.cut_id, sources=[AudioSource(type="file", channels=[0], source=u.path)],
                            sampling_rate=SAMPLE_RATE, num_samples=n, duration=n / SAMPLE_RATE,
                            channel_ids=[0])
            sup = SupervisionSegment(id=u.cut_id, recording_id=u.cut_id, start=0.0, duration=rec.duration,
                                     channel=0, text=u.text, language=u.language,
                                     speaker=f"{u.voice}_s{u.speed}_p{u.pitch}",
                                     custom={"task": "transcribe"})
            cuts.append(MonoCut(id=u.cut_id, start=0.0, duration=rec.duration, channel=0, recording=rec,
                                supervisions=[sup]))
        manifests = {"recordings": RecordingSet.from_recordings(c.recording for c in cuts),
                     "supervisions": SupervisionSet.from_segments(c.supervisions[0] for c in cuts),
                     "cuts": CutSet.from_cuts(cuts)}
        for name, manifest in manifests.items():
            final = out_dir / f"{name}_{split}.jsonl.gz"
            tmp = out_dir / f"{name}_{split}.partial.jsonl.gz"
            manifest.to_file(tmp)
            os.replace(tmp, final)
            paths[(name, split)] = final
    return {split: paths[("cuts", split)] for split in SPLITS}


def _count_by_split(utterances: list[Utterance], results: list[tuple[str, str, int, str]]) -> dict:
    """{split: {language: planned, kept, failed, too_short, too_long, hours}} from the shard results."""
    status_of = {cut_id: (status, n) for cut_id, status, n, _ in results}
    table: dict = {}
    for u in utterances:
        empty = {"planned": 0, "kept": 0, "failed": 0, "too_short": 0, "too_long": 0, "hours": 0.0}
        row = table.setdefault(u.split, {}).setdefault(u.language, empty)
        status, n = status_of[u.cut_id]
        row["planned"] += 1
        row["kept" if status == "ok" else status] += 1
        row["hours"] += n / SAMPLE_RATE / 3600 if status == "ok" else 0.0
    for langs in table.values():
        for row in langs.values():
            row["hours"] = round(row["hours"], 4)
    return table


def prepare_espeak_corpus(out_dir: str | Path, languages: tuple[str, ...] = ("es", "it"),
                          num_train: int = 8000, num_dev: int = 100, num_test: int = 200,
                          num_workers: int = 2, seed: int = 0,
                          min_duration_s: float = 0.5, max_duration_s: float = 20.0,
                          backend: str = "auto") -> dict[str, Path]:
    """Synthesise the corpus and write Lhotse manifests; skipped when already done with the same arguments.

    Args:
        out_dir: where ``audio/<split>/<lang>/<id>.wav``, ``{recordings,supervisions,cuts}_<split>.jsonl.gz``
            and ``prepare_stats.json`` go.
        languages: any of 'en', 'de', 'es', 'it'.
        num_train, num_dev, num_test: sentences per language and split (train is cut short, with a warning
            and a count, when a language has too few sentences).
        num_workers: synthesis processes (the output does not depend on it).
        seed: sentence split and voice, speed and pitch draws.
        min_duration_s, max_duration_s: utterances outside this range are dropped and counted.
        backend: 'library' (libespeak-ng via ctypes), 'command' (the espeak-ng program) or 'auto' (library
            when it loads).

    Returns:
        {"train": path, "dev": path, "test": path} of the cuts manifests.

    Raises:
        ValueError: bad arguments or too few sentences for dev + test.
        RuntimeError: a split that was asked for came out empty (every synthesis failed or was out of range).
    """
    if backend == "auto":
        backend = "library" if find_espeak_library() else "command"
    if backend not in ("library", "command"):
        raise ValueError(f"backend must be 'auto', 'library' or 'command', not {backend!r}")
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"languages must be distinct and not empty, got {languages!r}")
    if num_workers < 1 or min(num_train, num_dev, num_test) < 0 or not 0 <= min_duration_s < max_duration_s:
        raise ValueError("need num_workers >= 1, num_* >= 0 and 0 <= min_duration_s < max_duration_s")
    out_dir = Path(out_dir)
    stats_path = out_dir / "prepare_stats.json"
    args = {"languages": list(languages), "num_train": num_train, "num_dev": num_dev, "num_test": num_test,
            "seed": seed, "min_duration_s": min_duration_s, "max_duration_s": max_duration_s,
            "backend": backend, "version": MANIFEST_VERSION}
    cuts_paths = {s: out_dir / f"cuts_{s}.jsonl.gz" for s in SPLITS}
    if stats_path.exists() and all(p.exists() for p in cuts_paths.values()):
        if json.loads(stats_path.read_text()).get("args") == args:
            print(f"[espeak-corpus] {out_dir} already prepared with the same arguments, skipping", flush=True)
            return cuts_paths
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path.unlink(missing_ok=True)  # written last: its presence means the manifests are complete
    shutil.rmtree(out_dir / "audio", ignore_errors=True)

    utterances, info = plan_utterances(out_dir, tuple(languages), num_train, num_dev, num_test, seed)
    for lang, item in info.items():
        if item["train_shortfall"] > 0:
            print(f"[espeak-corpus] warning: {lang} has {item['train_shortfall']} fewer train sentences than "
                  f"num_train={num_train}", flush=True)
    shards = [utterances[i:i + SHARD_SIZE] for i in range(0, len(utterances), SHARD_SIZE)]
    tasks = [(backend, shard, min_duration_s, max_duration_s) for shard in shards]
    results = []
    start = time.perf_counter()
    # One fresh forked process per shard (maxtasksperchild=1): libespeak-ng state never crosses shards.
    with mp.get_context("fork").Pool(min(num_workers, max(1, len(tasks))), maxtasksperchild=1) as pool, \
            tqdm(total=len(utterances), unit="utt", desc="espeak-ng", mininterval=2.0) as bar:
        for shard_results in pool.imap_unordered(_synthesize_shard, tasks):
            results.extend(shard_results)
            bar.update(len(shard_results))
    seconds = time.perf_counter() - start

    num_samples = {cut_id: n for cut_id, status, n, _ in results if status == "ok"}
    table = _count_by_split(utterances, results)
    problems = [msg for _, status, _, msg in sorted(results) if status != "ok"]
    stats = {"args": args, "num_workers": num_workers, "synthesis_seconds": round(seconds, 2),
             "utterances_per_second": round(len(utterances) / max(seconds, 1e-9), 1), "splits": table,
             "dropped_examples": problems[:50],
             "sentences": {lang: item["filters"] for lang, item in info.items()},
             "train_shortfall": {lang: item["train_shortfall"] for lang, item in info.items()}}
    for split, langs in table.items():
        for lang, row in langs.items():
            print(f"[espeak-corpus] {split:5s} {lang}: kept {row['kept']}/{row['planned']} "
                  f"({row['hours']:.2f} h), dropped failed={row['failed']} too_short={row['too_short']} "
                  f"too_long={row['too_long']}", flush=True)
            if row["planned"] > 0 and row["kept"] == 0:
                raise RuntimeError(f"{split}/{lang}: all {row['planned']} utterances dropped, "
                                   f"e.g. {problems[:3]}")
    if problems:
        print(f"[espeak-corpus] {len(problems)} utterances dropped, e.g. {problems[:3]}", flush=True)
    paths = _write_manifests(out_dir, utterances, num_samples)
    print(f"[espeak-corpus] {len(utterances)} utterances in {seconds:.1f} s "
          f"({stats['utterances_per_second']} utt/s, backend={backend}, {num_workers} workers)", flush=True)
    atomic_write_json(stats_path, stats)
    return paths
