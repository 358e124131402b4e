"""The fast manifest length reader equals the Lhotse path with count_decoder_tokens, and names bad lines."""

import gzip
import random

import numpy as np
import pytest
from lhotse import CutSet
from lhotse.utils import fastcopy

from speech_ed.data.lengths import measure_manifest_lengths
from speech_ed.data.prompt import count_decoder_tokens
from speech_ed.data.text import normalize_text, normalize_text_by_characters
from speech_ed.sampling import measure_lengths


def test_ascii_fast_path_follows_the_rules():
    rng = random.Random(0)
    pool = [chr(i) for i in range(128)] + list("aeiou''``  ") + ["ñ", "è", "\u2019"]
    for _ in range(20000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 20)))
        assert normalize_text(s) == normalize_text_by_characters(s), repr(s)


def _write_manifest(cuts, path):
    cuts.to_file(path)
    return path


def test_equals_lhotse_path(tmp_path, tokenizer, small_cuts):
    extra = small_cuts.subset(first=2).modify_ids(lambda i: i + "-tr")
    extra = CutSet.from_cuts(
        fastcopy(c, supervisions=[s.with_custom("task", "translate").with_custom("translation", "hola amigo")
                                  .with_custom("target_language", "es") for s in c.supervisions]) for c in extra)
    punct = CutSet.from_cuts(fastcopy(c, id=c.id + "-p", supervisions=[
        s.transform_text(lambda t: t.upper() + "!  ¿Sí?") for s in c.supervisions]) for c in small_cuts.subset(first=3))
    mixed = small_cuts.subset(first=1).pad(duration=5.0).modify_ids(lambda i: i + "-mix")
    cuts = small_cuts + extra + punct + mixed
    path = _write_manifest(cuts, tmp_path / "cuts.jsonl.gz")
    for pnc in (False, True):
        ref = measure_lengths(CutSet.from_file(path), lambda c, pnc=pnc: count_decoder_tokens(c, tokenizer, pnc))
        for workers in (0, 2):
            got = measure_manifest_lengths(path, tokenizer.model_path, pnc=pnc, num_workers=workers,
                                           chunk_size=5, progress=False)
            assert list(got.ids) == list(ref.ids)
            np.testing.assert_allclose(got.durations, ref.durations)
            assert list(got.tokens) == list(ref.tokens)


def test_bad_line_is_named(tmp_path, tokenizer, small_cuts):
    path = _write_manifest(small_cuts, tmp_path / "cuts.jsonl.gz")
    lines = gzip.open(path, "rt").read().splitlines()
    lines.insert(3, '{"id": "broken", ')
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz:4: not a valid cut manifest line"):
        measure_manifest_lengths(bad, tokenizer.model_path, num_workers=0, progress=False)
    nosup = tmp_path / "nosup.jsonl.gz"
    first = next(iter(small_cuts))
    CutSet.from_cuts([fastcopy(first, id="nosup", supervisions=[])]).to_file(nosup)
    with pytest.raises(ValueError, match=r"nosup\.jsonl\.gz:1: cut nosup has no supervision"):
        measure_manifest_lengths(nosup, tokenizer.model_path, num_workers=2, progress=False)
