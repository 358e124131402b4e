"""Sentence cleaning of the fortune databases: each filter on a small fake file, file discovery, real data."""

from __future__ import annotations

import pytest

from speech_ed.corpora.fortunes import FORTUNES_ROOT, fix_italian_accents, fortune_files, load_sentences

FAKE_EN = "\n%\n".join([
    "The cat sat on the mat. The dog barked at the moon!\n\t\t-- Some Author",
    "  /\\_/\\\n ( o o )\n  > ^ <",
    "int main() { return 0; }",
    "Ov\berstrike entry here please.",
    "Hi!? Yo!? Ok!? No!?",
    "This line has 42 digits in it. But this sentence is fine here.",
    "Call the FBI right now please. Send mail to me at home, e.g. tomorrow. Use a / slash in this one.",
    "- Do you speak dashes here?\n- Yes I certainly\ndo.",
    "Too short. The cat sat on the mat.",
    "This sentence is far too long because it keeps going on and on and on and on and on without any end "
    "in sight at all my dear friend.",
    "\u0391\u03c5\u03c4\u03cc \u03b5\u03af\u03bd\u03b1\u03b9 greek letters in here.",
    "\t-- Anonymous",
    "Bad \ufffd byte in this entry.",
    '"Quoted start without end, said the man.',
]) + "\n%\n"


@pytest.fixture
def fake_en(tmp_path):
    path = tmp_path / "fake"
    path.write_text(FAKE_EN, encoding="utf-8")
    return path


def test_every_filter_counts_what_it_removed(fake_en):
    sentences, counts = load_sentences("en", files=[fake_en])
    assert sentences == ["The cat sat on the mat.", "The dog barked at the moon!",
                         "But this sentence is fine here.", "Do you speak dashes here?",
                         "Yes I certainly do.", "Quoted start without end, said the man."]
    assert counts == {
        "files": 1, "entries": 14, "attributions_cut": 2, "entry_empty_after_attribution": 1,
        "entry_ascii_art": 1, "entry_code": 1, "entry_overstrike_or_bad_bytes": 2,
        "entry_low_letter_ratio": 1,
        "sentences": 14, "sentence_digits": 1, "sentence_all_caps_word": 1, "sentence_internal_period": 1,
        "sentence_symbols": 1, "sentence_too_few_words": 1, "sentence_too_many_words": 1,
        "sentence_non_latin_letters": 1, "duplicate": 1, "kept": 6,
    }
    dropped = sum(v for k, v in counts.items() if k.startswith("sentence_") or k == "duplicate")
    assert counts["sentences"] == counts["kept"] + dropped


def test_italian_accents_and_dialogue(tmp_path):
    path = tmp_path / "it"
    path.write_text("E' vero che l'obesita' e' un po' cosi' grave.\n%\n"
                    "- Perche' non hai detto 'ciao' a tua zia?\n- Perche' ero ventitre' metri lontano.\n%\n",
                    encoding="utf-8")
    sentences, counts = load_sentences("it", files=[path])
    assert sentences == ["È vero che l'obesità è un po' così grave.",
                         "Perché non hai detto 'ciao' a tua zia?", "Perché ero ventitré metri lontano."]
    assert counts["kept"] == 3
    fixed = fix_italian_accents("Andrea `Zuse' e Quant'e' bella, ne' se'")
    assert fixed == "Andrea `Zuse' e Quant'è bella, né sé"


def test_fortune_files_skip_links_indexes_and_offensive(tmp_path):
    (tmp_path / "it").mkdir()
    (tmp_path / "off").mkdir()
    (tmp_path / "it" / "adams").write_text("Ciao.\n%\n")
    (tmp_path / "adams").symlink_to(tmp_path / "it" / "adams")  # Debian links Italian files into the en root
    (tmp_path / "off" / "rude").write_text("Rude.\n%\n")
    (tmp_path / "people").write_text("Hello.\n%\n")
    (tmp_path / "people.dat").write_bytes(b"\0\1")
    (tmp_path / "people.u8").symlink_to(tmp_path / "people")
    assert fortune_files("en", tmp_path) == [tmp_path / "people"]
    assert fortune_files("it", tmp_path) == [tmp_path / "it" / "adams"]
    with pytest.raises(FileNotFoundError, match="fortunes-de"):
        fortune_files("de", tmp_path)
    with pytest.raises(ValueError, match="xx"):
        fortune_files("xx", tmp_path)


@pytest.mark.skipif(not (FORTUNES_ROOT / "es").is_dir(), reason="fortunes-es not installed")
def test_installed_spanish_is_clean_and_deterministic():
    sentences, counts = load_sentences("es")
    assert len(sentences) > 5000 and counts["kept"] == len(sentences)
    assert not any(s.startswith(("-", '"', "'")) for s in sentences)  # espeak-ng: a leading '-' is an option
    assert not any(ch.isdigit() for s in sentences for ch in s)
    assert all(4 <= len(s.split()) <= 25 for s in sentences)
    assert not any(p.parent.name == "off" for p in fortune_files("es"))
    assert load_sentences("es")[0] == sentences
