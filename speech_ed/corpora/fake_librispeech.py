"""A tiny corpus laid out exactly like LibriSpeech, spoken by espeak-ng, to test the real LibriSpeech path.

Usage::

    speech-ed fake-librispeech --out /tmp/fake_ls --parts train-clean-100=24 dev-clean=4 test-clean=4
    make recipe RECIPE=librispeech DATA_DIR=/tmp/fake_ls ARGS="model_preset=tiny ..."

Layout written (as OpenSLR's tarballs unpack)::

    <out>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono, FLAC
    <out>/LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt        "<id> UPPER CASE TEXT"

Sentences are English fortunes (``speech_ed.corpora.fortunes``) written as LibriSpeech writes transcripts:
upper case, no punctuation, apostrophes only inside words. Each part gets its own sentences and its own
speakers (as in LibriSpeech, where parts share no speaker); a speaker keeps one espeak-ng voice and pitch.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speech_ed.corpora.espeak import (
    SAMPLE_RATE,
    EspeakCommand,
    EspeakLibrary,
    find_espeak_library,
    resample_to_16k,
)
from speech_ed.corpora.fortunes import load_sentences
from speech_ed.data.text import normalize_text

LIBRISPEECH_PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean", "dev-other",
                     "test-clean", "test-other")
DEFAULT_PARTS = {"train-clean-100": 24, "dev-clean": 4, "test-clean": 4}
_VOICES = ("en-us+m1", "en-us+m3", "en-us+f2", "en+m5", "en+f4", "en-us+m7")
_NOT_LIBRISPEECH = re.compile(r"[^A-Z' ]")


@dataclass(frozen=True)
class FakeUtterance:
    """One planned file: LibriSpeech id (``spk-chap-utt``), transcript, voice settings and its flac path."""

    utt_id: str
    text: str
    voice: str
    speed: int
    pitch: int
    path: str


def librispeech_text(sentence: str) -> str:
    """``"Don't panic, Arthur!"`` -> ``"DON'T PANIC ARTHUR"`` (LibriSpeech transcript style)."""
    return " ".join(_NOT_LIBRISPEECH.sub(" ", normalize_text(sentence).upper()).split())


def plan_fake_librispeech(root: str | Path, parts: dict[str, int], speakers_per_part: int = 2,
                          chapters_per_speaker: int = 2, max_words: int = 12,
                          seed: int = 0) -> dict[str, list[FakeUtterance]]:
    """Choose sentences, speakers, chapters and voices; nothing is synthesised.

    Args:
        root: corpus root; files go under ``<root>/LibriSpeech/<part>/``.
        parts: utterances per part, e.g. ``{"train-clean-100": 24, "dev-clean": 4}``; names must be
            LibriSpeech's (lhotse's ``prepare_librispeech`` only knows those).
        speakers_per_part, chapters_per_speaker: folder structure; utterances are dealt round-robin.
        max_words: shorter sentences keep the audio (and the tests) short.
        seed: sentence order and voice draws.

    Returns:
        ``{part: [FakeUtterance, ...]}``.

    Raises:
        ValueError: an unknown part name, or more utterances asked than there are sentences.
    """
    unknown = sorted(set(parts) - set(LIBRISPEECH_PARTS))
    if unknown:
        raise ValueError(f"parts {unknown} are not LibriSpeech part names {LIBRISPEECH_PARTS}")
    sentences, _ = load_sentences("en")
    texts = [t for t in (librispeech_text(s) for s in sentences) if 3 <= len(t.split()) <= max_words]
    random.Random(f"{seed}:fake-librispeech").shuffle(texts)
    if sum(parts.values()) > len(texts):
        raise ValueError(f"{sum(parts.values())} utterances asked, only {len(texts)} English sentences")
    corpus = Path(root).resolve() / "LibriSpeech"
    plan, used, speaker = {}, 0, 100
    for part in sorted(parts):
        rng = random.Random(f"{seed}:{part}:voices")
        slots = []  # (speaker, chapter, voice, pitch)
        for _ in range(speakers_per_part):
            speaker += 1  # distinct speakers in every part, as in LibriSpeech
            voice, pitch = rng.choice(_VOICES), rng.randint(30, 70)
            slots += [(speaker, 1000 * speaker + c, voice, pitch) for c in range(chapters_per_speaker)]
        counters: dict[int, int] = {}
        utterances = []
        for i in range(parts[part]):
            spk, chap, voice, pitch = slots[i % len(slots)]
            n = counters[chap] = counters.get(chap, -1) + 1
            utt_id = f"{spk}-{chap}-{n:04d}"
            path = corpus / part / str(spk) / str(chap) / f"{utt_id}.flac"
            speed = rng.randint(150, 190)
            utterances.append(FakeUtterance(utt_id, texts[used], voice, speed, pitch, str(path)))
            used += 1
        plan[part] = utterances
    return plan


def _synthesize(task: tuple[str, list[FakeUtterance]]) -> list[str]:
    """Pool task: write one flac per utterance with a fresh engine; returns the ids that failed."""
    backend, utterances = task
    engine = EspeakLibrary() if backend == "library" else EspeakCommand()
    failed = []
    for u in utterances:
        try:
            audio = resample_to_16k(engine.synthesize(u.text.lower(), u.voice, u.speed, u.pitch),
                                    engine.sample_rate)
        except Exception:  # noqa: BLE001 - reported by the caller, which refuses a corpus with holes
            failed.append(u.utt_id)
            continue
        if audio.size == 0 or not np.any(audio):
            failed.append(u.utt_id)
            continue
        Path(u.path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(u.path, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return failed


def make_fake_librispeech(root: str | Path, parts: dict[str, int] | None = None, speakers_per_part: int = 2,
                          chapters_per_speaker: int = 2, seed: int = 0, num_workers: int = 1,
                          backend: str = "auto") -> Path:
    """Synthesise the corpus and write LibriSpeech's folders, flac files and ``*.trans.txt`` files.

    Args:
        root: output folder; the corpus is ``<root>/LibriSpeech``.
        parts: utterances per LibriSpeech part (default :data:`DEFAULT_PARTS`).
        speakers_per_part, chapters_per_speaker, seed: see :func:`plan_fake_librispeech`.
        num_workers: synthesis processes.
        backend: 'library' (libespeak-ng), 'command' (the espeak-ng program) or 'auto'.

    Returns:
        ``<root>/LibriSpeech``.

    Raises:
        RuntimeError: some utterance could not be synthesised (a fake corpus with holes would test nothing).
    """
    parts = dict(DEFAULT_PARTS if parts is None else parts)
    if backend == "auto":
        backend = "library" if find_espeak_library() else "command"
    plan = plan_fake_librispeech(root, parts, speakers_per_part, chapters_per_speaker, seed=seed)
    chapters: dict[Path, list[FakeUtterance]] = {}
    for utterances in plan.values():
        for u in utterances:
            chapters.setdefault(Path(u.path).parent, []).append(u)
    tasks = [(backend, us) for us in chapters.values()]
    # A fresh forked process per chapter: libespeak-ng keeps state between utterances.
    with mp.get_context("fork").Pool(max(1, min(num_workers, len(tasks))), maxtasksperchild=1) as pool:
        failed = [utt for result in pool.imap(_synthesize, tasks) for utt in result]
    if failed:
        raise RuntimeError(f"espeak-ng could not synthesise {len(failed)} utterances, e.g. {failed[:3]}")
    for folder, utterances in chapters.items():
        spk, chap = utterances[0].utt_id.split("-")[:2]
        lines = "".join(f"{u.utt_id} {u.text}\n" for u in utterances)
        (folder / f"{spk}-{chap}.trans.txt").write_text(lines)
    corpus = Path(root).resolve() / "LibriSpeech"
    for part, utterances in plan.items():
        print(f"[fake-librispeech] {part}: {len(utterances)} utterances -> {corpus / part}", flush=True)
    return corpus


def parse_parts(items: list[str]) -> dict[str, int]:
    """``["train-clean-100=24", "dev-clean=4"]`` -> ``{"train-clean-100": 24, "dev-clean": 4}``."""
    parts = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not count.isdigit():
            raise ValueError(f"--parts: {item!r} is not PART=COUNT (e.g. dev-clean=4)")
        parts[name] = int(count)
    return parts


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="corpus root; files go to OUT/LibriSpeech/<part>/")
    parser.add_argument("--parts", nargs="+", default=[f"{k}={v}" for k, v in DEFAULT_PARTS.items()],
                        help="PART=COUNT utterances per LibriSpeech part (default: %(default)s)")
    parser.add_argument("--speakers-per-part", type=int, default=2)
    parser.add_argument("--chapters-per-speaker", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2)


def main(args) -> int:
    make_fake_librispeech(args.out, parse_parts(args.parts), args.speakers_per_part,
                          args.chapters_per_speaker, args.seed, args.num_workers)
    return 0
