"""``CutIndex``: what the sampler needs to know of every cut of a corpus, as flat arrays.

The sampler plans an epoch on durations and decoder-token counts only, and reads a cut's manifest line only on
the rank that trains on it; the index says where that line is. Building it costs one pass over the corpus
(``speech_ed.data.lengths`` does it in parallel for a million cuts in under a minute); it is cached as ``.npz``
next to the run (see :func:`save_index` / :func:`load_index`) and reused by bin estimation and training.

Arrays (N records, in corpus order):

* ``durations`` (N,) float64 seconds;
* ``tokens`` (N,) int64 decoder tokens, prompt included (0 where the cut cannot train);
* ``status`` (N,) int8: 0, or why the cut cannot train (:data:`REASONS`), counted when it is skipped;
* ``file`` (N,) int32 and ``offset`` (N,) int64: the line's file and byte offset in the uncompressed text;
* ``extra``: format-specific (N, k) int64 columns (e.g. a Shar shard's tar member offsets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

# Why a cut cannot train; index 0 means it can. Counted per corpus as skipped_<reason>.
REASONS = ("ok", "no_supervision", "empty_transcript", "unknown_language", "unknown_task", "too_short",
           "too_long", "filtered")
REASON_CODE = {name: i for i, name in enumerate(REASONS)}
INDEX_VERSION = 1


@dataclass
class CutIndex:
    """Per-record arrays of one corpus (see the module docstring)."""

    durations: np.ndarray
    tokens: np.ndarray
    status: np.ndarray
    file: Optional[np.ndarray] = None
    offset: Optional[np.ndarray] = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.durations = np.asarray(self.durations, dtype=np.float64)
        self.tokens = np.asarray(self.tokens, dtype=np.int64)
        self.status = np.asarray(self.status, dtype=np.int8)
        n = len(self.durations)
        for name in ("tokens", "status", "file", "offset"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"CutIndex.{name} has {len(value)} entries for {n} durations")

    def __len__(self) -> int:
        return len(self.durations)

    def with_duration_limits(self, min_duration_s: Optional[float], max_duration_s: Optional[float]) -> "CutIndex":
        """A copy whose status marks cuts outside ``[min_duration_s, max_duration_s]`` too short / too long
        (a cut already skipped for another reason keeps that reason)."""
        status = self.status.copy()
        ok = status == 0
        if min_duration_s is not None:
            status[ok & (self.durations < min_duration_s)] = REASON_CODE["too_short"]
        if max_duration_s is not None:
            status[ok & (self.durations > max_duration_s)] = REASON_CODE["too_long"]
        return CutIndex(self.durations, self.tokens, status, self.file, self.offset, dict(self.extra))

    def skipped(self) -> dict[str, int]:
        """``{reason: cuts}`` for every reason present (distinct cuts of the whole corpus)."""
        values, counts = np.unique(self.status, return_counts=True)
        return {REASONS[int(v)]: int(c) for v, c in zip(values, counts) if int(v) != 0}

    @property
    def hours(self) -> float:
        return float(self.durations.sum()) / 3600.0


def save_index(path: Union[str, os.PathLike], index: CutIndex, meta: str = "") -> None:
    """Write the index as ``.npz`` atomically (``meta``: a JSON string describing what was counted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"version": np.array(INDEX_VERSION), "durations": index.durations, "tokens": index.tokens,
              "status": index.status, "meta": np.array(meta)}
    if index.file is not None:
        arrays["file_index"] = index.file  # (np.savez's own first argument is called 'file')
    if index.offset is not None:
        arrays["offset"] = index.offset
    for k, v in index.extra.items():
        arrays[f"extra_{k}"] = v
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_index(path: Union[str, os.PathLike]) -> Optional[CutIndex]:
    """Read an index written by :func:`save_index`; None when it is of another version."""
    with np.load(path, allow_pickle=False) as z:
        if "version" not in z or int(z["version"]) != INDEX_VERSION:
            return None
        extra = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
        return CutIndex(z["durations"], z["tokens"], z["status"], z["file_index"] if "file_index" in z else None,
                        z["offset"] if "offset" in z else None, extra)
