"""The one text normalisation used for 'no punctuation' targets and for WER.

Rules (documented in the README): Unicode NFC; lower-case; hyphens and dashes become spaces; apostrophes are
kept only between two letters (``don't``), every other punctuation mark or symbol is removed; whitespace is
collapsed. Letters with accents are kept as they are (``è`` stays ``è``).
"""

from __future__ import annotations

import re
import unicodedata

_DASHES = re.compile(r"[-\u2010-\u2015]")
_APOSTROPHES = re.compile(r"[\u2019\u2018`\u00b4]")
_SPACES = re.compile(r"\s+")


# ASCII fast path (the same rules): punctuation and symbols -> space, backtick -> apostrophe, lower-case.
_ASCII_TABLE = {c: (chr(c).lower() if chr(c).isalnum() or chr(c).isspace() else "'" if chr(c) in "'`" else " ")
                for c in range(128)}
_LONE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def normalize_text(text: str) -> str:
    """Lower-case, punctuation-free form of ``text`` (see the module docstring for the exact rules)."""
    if text.isascii():
        text = text.translate(_ASCII_TABLE)
        if "'" in text:
            text = _LONE_APOSTROPHE.sub(" ", text)
        return " ".join(text.split())
    return normalize_text_by_characters(text)


def normalize_text_by_characters(text: str) -> str:
    """The rules applied character by character: what :func:`normalize_text` does for any text (its ASCII
    fast path gives the same result, tested against this)."""
    text = unicodedata.normalize("NFC", text)
    text = _APOSTROPHES.sub("'", text).lower()
    text = _DASHES.sub(" ", text)
    out = []
    for i, ch in enumerate(text):
        if ch.isalnum() or ch.isspace():
            out.append(ch)
        elif ch == "'" and 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha():
            out.append(ch)
        else:
            out.append(" ")
    return _SPACES.sub(" ", "".join(out)).strip()
