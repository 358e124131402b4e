"""Durations and decoder-token counts of a whole manifest, fast enough for a million cuts.

Bin estimation and the padding report need only two numbers per cut. Building Lhotse objects for every line
and encoding texts one at a time costs about 50 us per cut; this reader parses the JSON lines itself for plain
``MonoCut`` lines (anything else goes through Lhotse's deserialiser), normalises text with the same
:func:`speech_ed.data.prompt.target_of` as training, counts tokens with the same
:func:`speech_ed.data.prompt.count_target_tokens` in batched SentencePiece calls, and spreads chunks of lines
over worker processes. The result equals ``measure_lengths(CutSet.from_file(path), count_decoder_tokens)``
(tested).
"""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import orjson
from tqdm import tqdm

from speech_ed.data.prompt import count_target_tokens, cut_target, target_of
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.sampling.padding import Lengths

_TOKENIZER: Optional[Tokenizer] = None
_PNC = False
_THREADS = -1  # SentencePiece threads per call: 1 in worker processes (they already use every core)


def _init_worker(tokenizer_path: str, pnc: bool, threads: int = 1) -> None:
    global _TOKENIZER, _PNC, _THREADS
    _TOKENIZER, _PNC, _THREADS = Tokenizer.load(tokenizer_path), pnc, threads


def _chunk_lengths(job: tuple[str, int, list[bytes]]) -> tuple[list[str], list[float], list[int]]:
    """(ids, durations, tokens) of one chunk of manifest lines; errors name the file and line."""
    from lhotse.serialization import deserialize_item

    where, first_line, lines = job
    ids, durations, targets = [], [], []
    for k, raw in enumerate(lines):
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ValueError(f"{where}:{first_line + k}: not a valid JSON cut line ({e})") from None
        try:
            sups = d.get("supervisions") if isinstance(d, dict) else None
            if isinstance(d, dict) and d.get("type", "MonoCut") == "MonoCut" and "duration" in d and sups:
                s = sups[0]
                target = target_of(d["id"], s.get("text"), s.get("language"), s.get("custom"), _PNC)
                cut_id, duration = d["id"], float(d["duration"])
            else:  # MixedCut, PaddingCut, a cut without supervision...: Lhotse's own object and rules
                cut = deserialize_item(d)
                target = cut_target(cut, _PNC)
                cut_id, duration = cut.id, float(cut.duration)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where}:{first_line + k}: {e}") from None
        ids.append(cut_id)
        durations.append(duration)
        targets.append(target)
    return ids, durations, count_target_tokens(targets, _TOKENIZER, _THREADS)


def _line_chunks(path: Path, chunk_size: int):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        chunk, first = [], 1
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not chunk:
                first = lineno
            chunk.append(line)
            if len(chunk) == chunk_size:
                yield str(path), first, chunk
                chunk = []
        if chunk:
            yield str(path), first, chunk


def measure_manifest_lengths(path: Union[str, os.PathLike], tokenizer_path: Union[str, os.PathLike],
                             pnc: bool = False, num_workers: Optional[int] = None, chunk_size: int = 4096,
                             progress: bool = True) -> Lengths:
    """Lengths of every cut of a ``.jsonl[.gz]`` cut manifest, in manifest order.

    Args:
        path: the cut manifest.
        tokenizer_path: the run's tokenizer (directory or ``tokenizer.model``).
        pnc: count punctuated targets (else normalised text), as training does.
        num_workers: processes; default ``min(4, cpu count)``; 0 runs in this process.
        chunk_size: lines per task.
        progress: show a progress bar (on a terminal).

    Raises:
        ValueError: ``FILE:LINE: ...`` for a line that is not JSON or not a usable cut.
    """
    path = Path(path)
    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    ids, durations, tokens = [], [], []
    bar = tqdm(desc=f"lengths {path.name}", unit=" cuts", disable=None if progress else True, leave=False)
    chunks = _line_chunks(path, chunk_size)
    if num_workers == 0:
        _init_worker(str(tokenizer_path), pnc, threads=-1)
        results = map(_chunk_lengths, chunks)
        pool = None
    else:
        pool = mp.get_context("fork" if os.name == "posix" else "spawn").Pool(
            num_workers, initializer=_init_worker, initargs=(str(tokenizer_path), pnc))
        results = pool.imap(_chunk_lengths, chunks)
    try:
        for i, d, t in results:
            ids += i
            durations += d
            tokens += t
            bar.update(len(i))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return Lengths(np.asarray(ids, dtype=str), np.asarray(durations, dtype=np.float64),
                   np.asarray(tokens, dtype=np.int64))
