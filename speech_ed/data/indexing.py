"""Build the sampler's :class:`~speech_ed.sampling.index.CutIndex` of a corpus fast, and cache it.

One pass over the manifest text, in parallel chunks: each line's duration, decoder-token count (the same
:func:`speech_ed.data.prompt.count_target_tokens` training uses, in batched SentencePiece calls) and why it
cannot train (no supervision, empty transcript, a language without a prompt token, an unknown task), plus where
the line is (file, byte offset, line number). Plain ``MonoCut`` lines and NeMo lines are read as JSON without
building Lhotse objects; any other cut type goes through Lhotse's deserialiser. A line that is not JSON is an
error naming the file and line.

Formats: Lhotse cut manifests (``.jsonl[.gz]``), Lhotse Shar directories (their ``cuts.*.jsonl.gz`` shards,
plus the byte offset of each cut's audio in ``recording.*.tar``) and NeMo JSON-lines manifests
(``audio_filepath``, ``duration``, ``text``, optional ``offset``, ``lang``/``source_lang``, ``target_lang``,
``taskname``, ``answer``). The index is cached as ``.npz`` keyed by the files' paths, sizes and modification
times, the tokenizer's digest and the prompt settings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import orjson
from tqdm import tqdm

from speech_ed.data.prompt import Target, count_target_tokens, cut_target, describe_prompt_format, target_of
from speech_ed.data.tokenizer import TASKS, Tokenizer
from speech_ed.sampling.index import REASON_CODE, CutIndex, load_index, save_index
from speech_ed.sampling.stream import ManifestFormatError

NEMO_TRANSLATE = {"ast", "s2t_translation", "translate", "st"}
NEMO_TRANSCRIBE = {"asr", "s2t_transcription", "transcribe"}


@dataclass(frozen=True)
class Defaults:
    """Corpus-level values for cuts (lines) that do not carry them: source language, task, target language."""

    language: Optional[str] = None
    task: Optional[str] = None
    target_language: Optional[str] = None


NO_DEFAULTS = Defaults()


def with_defaults(language: Optional[str], custom: Optional[dict], defaults: Defaults) -> tuple[str, dict]:
    """A Lhotse supervision's language and custom fields with the corpus defaults filled in."""
    custom = dict(custom or {})
    if defaults.task and "task" not in custom:
        custom["task"] = defaults.task
    if defaults.target_language and "target_language" not in custom:
        custom["target_language"] = defaults.target_language
    return (language or defaults.language or ""), custom


def nemo_target(d: dict, defaults: Defaults, pnc: bool) -> Target:
    """The decoder target of a NeMo manifest line (see the module docstring for the fields read)."""
    src = d.get("source_lang") or d.get("lang") or defaults.language or ""
    tgt = d.get("target_lang") or defaults.target_language or src
    name = str(d.get("taskname") or "").lower()
    if name in NEMO_TRANSLATE:
        task = "translate"
    elif name in NEMO_TRANSCRIBE:
        task = "transcribe"
    elif name:
        task = name  # counted as unknown_task
    else:
        task = defaults.task or ("translate" if tgt != src else "transcribe")
    if task == "translate":
        custom = {"task": "translate", "translation": d.get("answer", ""), "target_language": tgt}
    else:
        custom = {"task": task}
    text = d.get("text") if task == "translate" or "answer" not in d else d["answer"]
    return target_of("", text, src, custom, pnc)


# ------------------------------------------------------------------------------------------ worker processes

_TOKENIZER: Optional[Tokenizer] = None
_THREADS = -1


def _init_worker(tokenizer_path: str, threads: int = 1) -> None:
    global _TOKENIZER, _THREADS
    _TOKENIZER, _THREADS = Tokenizer.load(tokenizer_path), threads


def problem(target: Target, tokenizer: Tokenizer) -> Optional[str]:
    """Why a target cannot train (a :data:`~speech_ed.sampling.index.REASONS` name), or None."""
    if not target.text.strip():
        return "empty_transcript"
    if not (tokenizer.has_language(target.source_lang) and tokenizer.has_language(target.target_lang)):
        return "unknown_language"
    if target.task not in TASKS:
        return "unknown_task"
    return None


def _parse_line(fmt: str, d, defaults: Defaults, pnc: bool) -> tuple[float, Optional[Target]]:
    if fmt == "nemo":
        if not isinstance(d, dict) or "duration" not in d or "audio_filepath" not in d:
            raise ValueError("a NeMo manifest line needs 'audio_filepath' and 'duration'")
        return float(d["duration"]), nemo_target(d, defaults, pnc)
    sups = d.get("supervisions") if isinstance(d, dict) else None
    if isinstance(d, dict) and d.get("type", "MonoCut") == "MonoCut" and "duration" in d and sups:
        s = sups[0]
        language, custom = with_defaults(s.get("language"), s.get("custom"), defaults)
        return float(d["duration"]), target_of(d["id"], s.get("text"), language, custom, pnc)
    from lhotse.serialization import deserialize_item  # any other cut type: Lhotse's own object and rules

    cut = deserialize_item(d)
    if not cut.supervisions:
        return float(cut.duration), None
    if defaults != NO_DEFAULTS:
        sup = cut.supervisions[0]
        sup.language, sup.custom = with_defaults(sup.language, sup.custom, defaults)
    return float(cut.duration), cut_target(cut, pnc)


def _index_chunk(job) -> tuple[list[float], list[int], list[int], list[str]]:
    """(durations, tokens, status codes, cut ids) of one chunk of lines; errors name the file and line."""
    fmt, where, defaults, pnc, lines = job
    kind = "NeMo" if fmt == "nemo" else "cut"
    durations, status, targets, slots, ids = [], [], [], [], []
    for line_no, raw in lines:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ManifestFormatError(f"{where}:{line_no}: not a valid {kind} manifest line (not JSON: {e})") from None
        try:
            duration, target = _parse_line(fmt, d, defaults, pnc)
        except (ValueError, KeyError, TypeError) as e:
            raise ManifestFormatError(f"{where}:{line_no}: not a valid {kind} manifest line ({e})") from None
        durations.append(duration)
        ids.append(d.get("id", "") if isinstance(d, dict) else "")
        why = "no_supervision" if target is None else problem(target, _TOKENIZER)
        status.append(REASON_CODE[why] if why else 0)
        if why is None:
            slots.append(len(targets))
            targets.append(target)
        else:
            slots.append(-1)
    counts = count_target_tokens(targets, _TOKENIZER, _THREADS) if targets else []
    tokens = [counts[k] if k >= 0 else 0 for k in slots]
    return durations, tokens, status, ids


def read_lines(paths: Sequence[Path], chunk_size: int = 4096) -> Iterator[tuple[int, int, list]]:
    """``(file index, [byte offset of each line], [(line number, raw line)...])`` chunks of the non-empty
    lines of ``paths``, read one file after the other (offsets in the uncompressed text)."""
    for fi, path in enumerate(paths):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            chunk, offsets, pos = [], [], 0
            for line_no, raw in enumerate(f, start=1):
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue
                chunk.append((line_no, raw))
                offsets.append(start)
                if len(chunk) == chunk_size:
                    yield fi, offsets, chunk
                    chunk, offsets = [], []
            if chunk:
                yield fi, offsets, chunk


def build_index(fmt: str, paths: Sequence[os.PathLike | str], tokenizer_path: os.PathLike | str,
                defaults: Defaults = NO_DEFAULTS, pnc: bool = False, num_workers: Optional[int] = None,
                progress: bool = True, chunk_size: int = 4096, keep_ids: bool = False) -> CutIndex:
    """Index line-based manifests (``fmt`` 'lhotse' or 'nemo'; Shar shards are Lhotse lines) in parallel.

    Args:
        fmt: 'lhotse' or 'nemo'.
        paths: files read one after the other (a Shar directory's ``cuts.*.jsonl.gz`` shards in order).
        tokenizer_path: the run's tokenizer.
        defaults: corpus-level language / task / target language.
        pnc: count punctuated targets, as training does.
        num_workers: processes (default ``min(4, cpu count)``; 0 runs here).
        progress: a progress bar on a terminal.
        chunk_size: lines per task.
        keep_ids: also keep the cut ids, as ``extra['ids']`` (a str array; not cached).
    """
    paths = [Path(p) for p in paths]
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    files, offsets, lines, durations, tokens, status, ids = [], [], [], [], [], [], []
    meta: list[tuple[int, list, list]] = []

    def jobs():
        for fi, offs, chunk in read_lines(paths, chunk_size):
            meta.append((fi, offs, [n for n, _ in chunk]))
            yield fmt, str(paths[fi]), defaults, pnc, chunk

    bar = tqdm(desc=f"index {paths[0].parent.name}/{paths[0].name}" if paths else "index", unit=" cuts",
               disable=None if progress else True, leave=False)
    pool = None
    if num_workers == 0:
        _init_worker(str(tokenizer_path), threads=-1)
        results = map(_index_chunk, jobs())
    else:
        pool = mp.get_context("fork" if os.name == "posix" else "spawn").Pool(
            num_workers, initializer=_init_worker, initargs=(str(tokenizer_path),))
        results = pool.imap(_index_chunk, jobs())
    try:
        for k, (d, t, s, i) in enumerate(results):
            fi, offs, numbers = meta[k]
            files += [fi] * len(d)
            offsets += offs
            lines += numbers
            durations += d
            tokens += t
            status += s
            if keep_ids:
                ids += i
            bar.update(len(d))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    extra = {"line": np.asarray(lines, dtype=np.int64)}
    if keep_ids:
        extra["ids"] = np.asarray(ids, dtype=str)
    return CutIndex(np.asarray(durations, dtype=np.float64), np.asarray(tokens, dtype=np.int64),
                    np.asarray(status, dtype=np.int8), np.asarray(files, dtype=np.int32),
                    np.asarray(offsets, dtype=np.int64), extra)


def index_key(paths: Sequence[os.PathLike | str], tokenizer_path: os.PathLike | str, *parts: str) -> str:
    """Cache key: every file's resolved path, size and modification time, the tokenizer's bytes, and
    ``parts`` (format, prompt settings, defaults)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(hashlib.sha256(Path(tokenizer_path).read_bytes()).digest())
    for part in parts:
        h.update(part.encode())
    return h.hexdigest()[:20]


def cached_index(fmt: str, paths: Sequence[os.PathLike | str], tokenizer: Tokenizer, cache_dir: os.PathLike | str,
                 defaults: Defaults = NO_DEFAULTS, pnc: bool = False, extra=None, **kw) -> CutIndex:
    """:func:`build_index`, or the cached copy from an earlier build of the same files and settings.

    Args:
        extra: optional ``f(index) -> index`` adding format-specific columns before caching (Shar tar offsets).
    """
    prompt = json.dumps(describe_prompt_format(pnc), sort_keys=True)
    key = index_key(paths, tokenizer.model_path, fmt, prompt, json.dumps(asdict(defaults), sort_keys=True))
    cache = Path(cache_dir) / f"{Path(paths[0]).parent.name}_{Path(paths[0]).name}.{key}.index.npz"
    if cache.is_file():
        index = load_index(cache)
        if index is not None:
            return index
    index = build_index(fmt, paths, tokenizer.model_path, defaults, pnc, **kw)
    if extra is not None:
        index = extra(index)
    save_index(cache, index, meta=json.dumps({"format": fmt, "paths": [str(p) for p in paths]}))
    return index
