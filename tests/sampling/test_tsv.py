"""Metadata TSV -> audio-less cuts; malformed rows give errors naming file, line and field."""

import pytest
from lhotse import CutSet

from speech_ed.sampling import TsvFormatError, import_tsv

TSV = ("id\tduration_seconds\ttext\ttranslation\n"
       "a-1\t1.5\tHello \"there\"\tHallo da\nb-2\t2.25\tBye\tTschuss\n")


def test_transcribe_and_translate(tmp_path):
    (tmp_path / "m.tsv").write_text(TSV, encoding="utf-8")
    summary = import_tsv(tmp_path / "m.tsv", tmp_path / "asr.jsonl.gz", language="en")
    assert summary == {"cuts": 2, "hours": round(3.75 / 3600, 3)}
    cuts = CutSet.from_file(tmp_path / "asr.jsonl.gz")
    a = next(iter(cuts))
    assert a.id == "a-1" and a.duration == 1.5 and not a.has_recording
    sup = a.supervisions[0]
    assert sup.text == 'Hello "there"' and sup.language == "en" and sup.custom == {"task": "transcribe"}

    import_tsv(tmp_path / "m.tsv", tmp_path / "ast.jsonl.gz", language="en", task="translate",
               target_language="de")
    b = list(CutSet.from_file(tmp_path / "ast.jsonl.gz"))[1]
    assert b.supervisions[0].custom == {"task": "translate", "target_language": "de",
                                        "translation": "Tschuss"}
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


@pytest.mark.parametrize("body,match", [
    ("id\tduration_seconds\ttext\nx\t1.0\n", r"m.tsv:2: 2 tab-separated fields, expected 3"),
    ("id\tduration_seconds\ttext\nx\tabc\thi\n", r"m.tsv:2: field 'duration_seconds' is 'abc'"),
    ("id\tduration_seconds\ttext\nx\t-1\thi\n", r"m.tsv:2: field 'duration_seconds' is '-1'"),
    ("id\tduration_seconds\ttext\nx\t1\thi\nx\t2\tho\n", r"m.tsv:3: field 'id' repeats 'x'"),
    ("id\tduration_seconds\ttext\n\t1\thi\n", r"m.tsv:2: field 'id' is empty"),
    ("id\tseconds\ttext\nx\t1\thi\n", r"m.tsv:1: header .* lacks column\(s\) \['duration_seconds'\]"),
])
def test_malformed_rows(tmp_path, body, match):
    (tmp_path / "m.tsv").write_text(body, encoding="utf-8")
    with pytest.raises(TsvFormatError, match=match):
        import_tsv(tmp_path / "m.tsv", tmp_path / "out.jsonl.gz", language="en")
    assert not (tmp_path / "out.jsonl.gz").exists()


def test_translate_needs_translation_column(tmp_path):
    (tmp_path / "m.tsv").write_text("id\tduration_seconds\ttext\nx\t1\thi\n", encoding="utf-8")
    with pytest.raises(TsvFormatError, match="needs a 'translation' column"):
        import_tsv(tmp_path / "m.tsv", tmp_path / "o.jsonl.gz", "en", task="translate", target_language="de")
    with pytest.raises(ValueError, match="needs --target-language"):
        import_tsv(tmp_path / "m.tsv", tmp_path / "o.jsonl.gz", "en", task="translate")
