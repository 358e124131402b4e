"""Audio-less Lhotse cuts from metadata TSVs (``id  duration_seconds  text  [translation]``).

Such cuts have no recording: only a duration and one supervision. They are enough for bin estimation,
padding statistics and tokenizer training, which never touch audio.

Supervision fields (the same everywhere in speech_ed): ``supervision.language`` is the source language;
``supervision.custom`` is ``{"task": "transcribe"}`` or ``{"task": "translate", "target_language": "yy",
"translation": "..."}``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Optional, Union

from lhotse import CutSet, MonoCut, SupervisionSegment

REQUIRED_COLUMNS = ("id", "duration_seconds", "text")


class TsvFormatError(ValueError):
    """A malformed metadata TSV; the message names the file, line and field."""


def iter_tsv_rows(path: Union[str, os.PathLike]) -> Iterator[dict[str, str]]:
    """Rows of a metadata TSV as dicts, checked as they are read.

    The file is UTF-8, tab-separated, with one header line and no quoting (texts may contain ``"``).

    Raises:
        TsvFormatError: missing columns, a row with the wrong number of fields, an empty id, a duration that
            is not a positive finite number, or a repeated id.
    """
    path = Path(path)
    seen: set[str] = set()
    with open(path, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise TsvFormatError(f"{path}:1: header {header} lacks column(s) {missing}; expected "
                                 "'id<TAB>duration_seconds<TAB>text[<TAB>translation]'")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                raise TsvFormatError(f"{path}:{lineno}: empty line")
            fields = line.split("\t")
            if len(fields) != len(header):
                raise TsvFormatError(f"{path}:{lineno}: {len(fields)} tab-separated fields, expected "
                                     f"{len(header)} ({', '.join(header)})")
            row = dict(zip(header, fields))
            if not row["id"]:
                raise TsvFormatError(f"{path}:{lineno}: field 'id' is empty")
            try:
                duration = float(row["duration_seconds"])
            except ValueError:
                duration = float("nan")
            if not (math.isfinite(duration) and duration > 0):
                raise TsvFormatError(f"{path}:{lineno}: field 'duration_seconds' is "
                                     f"{row['duration_seconds']!r}; expected a positive number of seconds")
            if row["id"] in seen:
                raise TsvFormatError(f"{path}:{lineno}: field 'id' repeats {row['id']!r}")
            seen.add(row["id"])
            yield row


def row_to_cut(row: dict[str, str], language: str, task: str = "transcribe",
               target_language: Optional[str] = None) -> MonoCut:
    """One audio-less cut (no recording) holding one supervision over its whole duration."""
    duration = float(row["duration_seconds"])
    if task == "translate":
        custom = {"task": "translate", "target_language": target_language, "translation": row["translation"]}
    else:
        custom = {"task": "transcribe"}
    sup = SupervisionSegment(id=row["id"], recording_id=row["id"], start=0.0, duration=duration, channel=0,
                             text=row["text"], language=language, custom=custom)
    return MonoCut(id=row["id"], start=0.0, duration=duration, channel=0, supervisions=[sup])


def import_tsv(path: Union[str, os.PathLike], out_path: Union[str, os.PathLike], language: str,
               task: str = "transcribe", target_language: Optional[str] = None) -> dict[str, int]:
    """Convert a metadata TSV to a cut manifest (``.jsonl.gz``), streaming and written atomically.

    Args:
        path: the TSV.
        out_path: output manifest; its suffix picks the format (``.jsonl.gz`` or ``.jsonl``).
        language: source language code stored in ``supervision.language``.
        task: 'transcribe' (target = text) or 'translate' (target = the translation column).
        target_language: required for 'translate'.

    Returns:
        ``{"cuts": n, "hours": h (rounded to 0.001)}``.
    """
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    if task == "translate" and not target_language:
        raise ValueError("--task translate needs --target-language")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    if task == "translate" and "translation" not in header:
        raise TsvFormatError(f"{path}:1: --task translate needs a 'translation' column; header is {header}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(out_path.suffixes[-2:]) if out_path.name.endswith(".jsonl.gz") else out_path.suffix
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp{suffix}")
    n, seconds = 0, 0.0
    try:
        with CutSet.open_writer(tmp) as writer:
            for row in iter_tsv_rows(path):
                writer.write(row_to_cut(row, language, task, target_language))
                n += 1
                seconds += float(row["duration_seconds"])
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"cuts": n, "hours": round(seconds / 3600, 3)}
