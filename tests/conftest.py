"""Shared fixtures: a tiny tokenizer and tiny on-disk cuts with real audio (sine tones), made on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.cut import MonoCut

from speech_ed.data.tokenizer import Tokenizer

TEXTS = {
    "es": ["hola que tal estas", "la casa es grande y blanca", "me gusta el cafe con leche", "donde esta el tren"],
    "it": ["ciao come stai oggi", "la pizza e molto buona", "andiamo al mare domani", "il gatto dorme sul divano"],
}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = [t for v in TEXTS.values() for t in v] * 5
    return Tokenizer.train(texts, tmp_path_factory.mktemp("tok"), vocab_size=60, languages=["en", "es", "it"])


def make_cut(tmp_dir, cut_id: str, text: str, lang: str, duration: float = 0.5, sr: int = 16000,
             write: bool = True) -> MonoCut:
    path = tmp_dir / f"{cut_id}.wav"
    if write:
        t = np.arange(int(duration * sr)) / sr
        sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
        rec = Recording.from_file(path, recording_id=cut_id)
    else:
        from lhotse.audio import AudioSource

        rec = Recording(id=cut_id, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                        sampling_rate=sr, num_samples=int(duration * sr), duration=duration)
    sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0, duration=rec.duration, text=text,
                             language=lang, custom={"task": "transcribe"})
    return MonoCut(id=cut_id, start=0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])


@pytest.fixture
def small_cuts(tmp_path) -> CutSet:
    cuts = []
    for lang, texts in TEXTS.items():
        for i, text in enumerate(texts):
            cuts.append(make_cut(tmp_path, f"{lang}-{i}", text, lang, duration=0.3 + 0.1 * i))
    return CutSet.from_cuts(cuts)
