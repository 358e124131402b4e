"""``Lengths``: every cut's duration and decoder-token count as arrays, measured once and cached as ``.npz``.

Counting decoder tokens with SentencePiece is the slow part of looking at a manifest, so bin estimation, the
padding report and the simulations share one measurement per (manifest, token counter), cached under a key made
of the manifest's path, size and modification time and the counter's provenance.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
from lhotse.cut import Cut


@dataclass
class Lengths:
    """Per-cut lengths of a manifest, in manifest order.

    Attributes:
        ids: (N,) cut ids.
        durations: (N,) seconds, float64.
        tokens: (N,) decoder tokens, int64 (zeros when no token counter was given).
    """

    ids: np.ndarray
    durations: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.durations)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write an ``.npz`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=self.ids, durations=self.durations, tokens=self.tokens)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Lengths":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["ids"], z["durations"], z["tokens"])


def file_digest(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def lengths_cache_key(manifest: Union[str, os.PathLike], *parts: str) -> str:
    """Cache key from the manifest's path, size and mtime plus other parts (tokenizer digest, prompt...)."""
    st = os.stat(manifest)
    text = "|".join([str(Path(manifest).resolve()), str(st.st_size), str(st.st_mtime_ns), *parts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure_lengths(cuts: Iterable[Cut], num_tokens: Optional[Callable[[Cut], int]] = None,
                    cache_path: Optional[Union[str, os.PathLike]] = None) -> Lengths:
    """Durations and decoder-token counts of every cut, computed once.

    Args:
        cuts: any iterable of cuts (a lazy CutSet streams).
        num_tokens: decoder tokens of a cut (prompt included); None stores zeros.
        cache_path: an ``.npz`` to read if it exists, else to write (the caller makes the name unique, e.g.
            with :func:`lengths_cache_key`).
    """
    if cache_path is not None and Path(cache_path).is_file():
        return Lengths.load(cache_path)
    ids, durations, tokens = [], [], []
    for cut in cuts:
        ids.append(cut.id)
        durations.append(cut.duration)
        tokens.append(num_tokens(cut) if num_tokens is not None else 0)
    lengths = Lengths(np.asarray(ids, dtype=str), np.asarray(durations, dtype=np.float64),
                      np.asarray(tokens, dtype=np.int64))
    if cache_path is not None:
        lengths.save(cache_path)
    return lengths
