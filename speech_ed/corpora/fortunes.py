"""Clean sentences from the Debian fortune databases, the text of the embedded espeak-ng corpus.

Usage::

    from speech_ed.corpora.fortunes import load_sentences
    sentences, counts = load_sentences("it")   # counts: what each filter removed

Where each language lives (Debian packages ``fortunes``, ``fortunes-de``, ``fortunes-es``, ``fortunes-it``):
``en`` is the plain files directly in ``/usr/share/games/fortunes``, the others are the files in its ``de/``,
``es/`` and ``it/`` folders. Symbolic links are never read: the English folder links the Italian files
(``adams -> it/adams``), and ``*.u8`` are links to the same data. ``*.dat`` files are binary indexes.
Sub-folders are never entered, so the offensive ``off/`` collections (``es/off/``, ``off/``) are skipped.

Cleaning, in order (every step counts what it removed):

* entries are the blocks between ``%`` lines; Italian ASCII accents become real accents (``e'`` -> ``è``,
  ``perche'`` -> ``perché``; ``po'`` stays); everything from the first attribution line (``--``/``—``) on is
  cut; entries with backspace overstrike or U+FFFD, code, ASCII art (3+ symbols in a row holding one that is
  not sentence punctuation, or ``---``) or under 85 % letters among non-space characters (an apostrophe
  inside a word counts as a letter) are dropped whole;
* dialogue lines and paragraphs are split apart, then sentences split after ``.!?…`` before a capital;
  leading dashes and quotes are stripped (espeak-ng reads a leading ``-`` as an option);
* a sentence is dropped if it has a digit, a character outside letters and plain punctuation, a non-Latin
  letter, an internal ``.`` (abbreviations, initials), an all-caps word of 2+ letters, or not 4-25 words;
* duplicates are removed by their normalised form (the training label): no two kept sentences share a label.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from speech_ed.data.text import normalize_text

FORTUNES_ROOT = Path("/usr/share/games/fortunes")
LANGUAGES = ("en", "de", "es", "it")
MIN_WORDS, MAX_WORDS = 4, 25
MIN_LETTER_RATIO = 0.85

_ATTRIBUTION = re.compile(r"^\s*(--|\u2014)")
_DIALOGUE_TURN = re.compile(r"^\s*[-\u2013\u2014]\s*\S")
_CODE = re.compile(r"[{}]|==|!=|&&|\|\||->|:=|\w\(\)|^\s*#(include|define|!)|^\s*(\$|>>>)\s", re.MULTILINE)
_SYMBOL_RUN = re.compile(r"(?:[^\w\s]|_){3,}")
_INNER_APOSTROPHE = re.compile(r"(?<=[^\W\d_])['\u2019](?=[^\W\d_])")
_PROSE_PUNCT = set(".,;:!?'\"()-\u00a1\u00bf\u00ab\u00bb\u201c\u201d\u2018\u2019\u2026")
_SENTENCE_END = re.compile(  # end mark (+ closing quotes), space, then opening marks and a capital
    r"([.!?\u2026]+[\"'\u00bb\u201d\u2019)]*)\s+"
    r"(?=[-\u2013\u2014\"'\u00ab\u201c\u2018\u00bf\u00a1(]*\s*[A-Z\u00c0-\u00d6\u00d8-\u00de])"
)
_LINE_BREAK_HYPHEN = re.compile(r"(?<=[^\W\d_])- (?=[^\W\d_])")
_LEADING_JUNK = re.compile(r"^[\s\-\u2013\u2014\"'`\u00ab\u00bb\u201c\u201d\u2018\u2019]+")
_TRAILING_PUNCT = re.compile(r"[\s.!?\u2026\"'\u00bb\u201d\u2019)]+$")
_ALLOWED_PUNCT = set(" .,;:!?'\"-()\u2013\u2014\u00ab\u00bb\u201c\u201d\u2018\u2019\u00bf\u00a1\u2026")
_WORD = re.compile(r"[^\W\d_]+")
_QUOTE_PAIRS = (('"', '"'), ("\u00ab", "\u00bb"), ("\u201c", "\u201d"))

# Italian written without accent keys: a whole word ending in a vowel and an apostrophe.
_IT_ACCENT = re.compile(r"(?<![^\W\d_])([^\W\d_]*)([aeiouAEIOU])'(?=[\s.,;:!?)\"\u00bb]|$)")
_IT_GRAVE = dict(zip("aeiouAEIOU", "àèìòùÀÈÌÒÙ"))
_IT_ACUTE_E = ("che", "tre", "ne", "se", "Che", "Tre", "Ne", "Se")  # perché, ventitré, né, sé
_IT_KEEP = {"po", "Po"}  # "un po'" is a real apostrophe (poco), not an accent


def fortune_files(language: str, root: str | Path = FORTUNES_ROOT) -> list[Path]:
    """The fortune data files of one language, sorted by name.

    Args:
        language: 'en', 'de', 'es' or 'it'.
        root: the fortunes folder (``en`` files directly in it, the others in ``<root>/<language>``).

    Returns:
        Regular files, not symbolic links, not ``.dat`` indexes, not in sub-folders (so never ``off/``).

    Raises:
        ValueError: unknown language.
        FileNotFoundError: the folder is missing or holds no data file (with the packages to install).
    """
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not one of {LANGUAGES}")
    folder = Path(root) if language == "en" else Path(root) / language
    package = "fortunes" if language == "en" else f"fortunes-{language}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; install it with: apt-get install {package}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no fortune file; install it with: apt-get install {package}")
    return files


def read_entries(path: str | Path) -> list[str]:
    """Entries of one fortune file: the blocks between ``%`` lines (bytes that are not UTF-8 -> U+FFFD)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    entries, lines = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    entries.append("\n".join(lines))
    return [e for e in entries if e.strip()]


def clean_entry(entry: str, counts: Counter) -> str | None:
    """Cut the attribution of one entry and check it whole; None (and a count) when it is dropped."""
    lines = entry.splitlines()
    for i, line in enumerate(lines):
        if _ATTRIBUTION.match(line):
            counts["attributions_cut"] += 1
            lines = lines[:i]
            break
    text = "\n".join(lines)
    chars = [c for c in text if not c.isspace()]
    if not chars:
        counts["entry_empty_after_attribution"] += 1
        return None
    if "\b" in text or "\ufffd" in text:
        counts["entry_overstrike_or_bad_bytes"] += 1
        return None
    if _CODE.search(text):
        counts["entry_code"] += 1
        return None
    if any(set(run) - _PROSE_PUNCT or "---" in run for run in _SYMBOL_RUN.findall(text)):
        counts["entry_ascii_art"] += 1
        return None
    letters = sum(c.isalpha() for c in chars) + len(_INNER_APOSTROPHE.findall(text))  # "don't", "l'idea"
    if letters / len(chars) < MIN_LETTER_RATIO:
        counts["entry_low_letter_ratio"] += 1
        return None
    return text


def fix_italian_accents(text: str) -> str:
    """Italian typed without accents -> accents: ``e'`` -> ``è``, ``E'`` -> ``È``, ``perche'`` -> ``perché``.

    Words quoted with a leading ``'`` or backtick are left alone, and so is ``po'``.
    """

    def accent(m: re.Match) -> str:
        stem, vowel, start = m.group(1), m.group(2), m.start()
        quoted = start > 0 and text[start - 1] in "'`" and (start == 1 or not text[start - 2].isalpha())
        if quoted or stem + vowel in _IT_KEEP:
            return m.group(0)
        if vowel in "eE" and (stem + vowel).endswith(_IT_ACUTE_E):
            return stem + ("é" if vowel == "e" else "É")
        return stem + _IT_GRAVE[vowel]

    return _IT_ACCENT.sub(accent, text)


def split_sentences(text: str) -> list[str]:
    """Sentences of a cleaned entry: paragraphs and dialogue turns apart, then ``.!?…`` before a capital."""
    blocks, current = [], []
    for line in text.splitlines():
        if not line.strip() or _DIALOGUE_TURN.match(line):
            blocks.append(current)
            current = []
        current.append(line.strip())
    blocks.append(current)
    sentences = []
    for lines in blocks:
        block = " ".join(lines)
        block = _LINE_BREAK_HYPHEN.sub("-", block)  # "iron-and-\nsilicon" was wrapped, not two words
        block = " ".join(block.split())
        sentences.extend(s for s in _SENTENCE_END.sub("\\1\n", block).split("\n") if s.strip())
    return sentences


def clean_sentence(sentence: str, counts: Counter) -> str | None:
    """Strip leading dashes/quotes and unbalanced quotes, then check a sentence; None (counted) if dropped."""
    s = _LEADING_JUNK.sub("", sentence).strip()
    for left, right in _QUOTE_PAIRS:
        unbalanced = s.count(left) % 2 if left == right else s.count(left) != s.count(right)
        if unbalanced:
            s = s.replace(left, "").replace(right, "").strip()
    reason = None
    if any(c.isdigit() for c in s):
        reason = "digits"
    elif any(not c.isalpha() and c not in _ALLOWED_PUNCT for c in s):
        reason = "symbols"
    elif any(c.isalpha() and not unicodedata.name(c, "").startswith("LATIN") for c in s):
        reason = "non_latin_letters"
    elif "." in _TRAILING_PUNCT.sub("", s) or "\u2026" in _TRAILING_PUNCT.sub("", s):
        reason = "internal_period"
    elif any(len(w) >= 2 and w.isupper() for w in _WORD.findall(s)):
        reason = "all_caps_word"
    else:
        num_words = sum(1 for w in s.split() if _WORD.search(w))
        if num_words < MIN_WORDS:
            reason = "too_few_words"
        elif num_words > MAX_WORDS:
            reason = "too_many_words"
    if reason is not None:
        counts[f"sentence_{reason}"] += 1
        return None
    return s


def load_sentences(language: str, files: list[str | Path] | None = None,
                   root: str | Path = FORTUNES_ROOT) -> tuple[list[str], dict[str, int]]:
    """Clean, de-duplicated sentences of one language, in a deterministic order.

    Args:
        language: 'en', 'de', 'es' or 'it'.
        files: fortune files to read instead of the installed ones (tests); read in the order given.
        root: the fortunes folder searched when ``files`` is None (see ``fortune_files``).

    Returns:
        (sentences, counts): sentences cased and punctuated as espeak-ng should read them, in file, entry and
        sentence order; counts holds the number of files, entries and sentences seen, what each filter removed
        (``entry_*``, ``sentence_*``, ``duplicate``) and ``kept``.
    """
    paths = fortune_files(language, root) if files is None else [Path(f) for f in files]
    counts: Counter = Counter(files=len(paths))
    sentences, seen = [], set()
    for path in paths:
        for entry in read_entries(path):
            counts["entries"] += 1
            if language == "it":
                entry = fix_italian_accents(entry)
            text = clean_entry(entry, counts)
            if text is None:
                continue
            for raw in split_sentences(text):
                counts["sentences"] += 1
                sentence = clean_sentence(raw, counts)
                if sentence is None:
                    continue
                key = normalize_text(sentence)
                if key in seen:
                    counts["duplicate"] += 1
                    continue
                seen.add(key)
                sentences.append(sentence)
    counts["kept"] = len(sentences)
    return sentences, dict(counts)
