"""Corpora the sampler can read: lengths up front (a :class:`CutIndex`), cuts on demand, in corpus order.

A source answers four questions:

* ``index``: durations, token counts and skip reasons of all N records (the sampler plans on these alone);
* ``pass_order(cycle, seed, shuffle)``: the record order of the ``cycle``-th pass over the corpus (None: corpus
  order; an eager CutSet is permuted per pass when shuffling);
* ``reader()``: an object whose ``get(i)`` returns record i's payload (a manifest line, or a cut), cheap when
  ``i`` only grows (one sequential read) and still correct when it jumps (a seek);
* ``materialise(payload)``: the lhotse ``Cut``.

Sources here: an eager CutSet, any lazy CutSet (read by iteration: a jump backwards re-reads from the start,
with a warning), and ``.jsonl[.gz]`` cut manifests (a jump is a seek, through a gzip index for ``.gz``).
``speech_ed.data.sources`` adds Lhotse Shar directories and NeMo JSON-lines manifests.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.serialization import decode_json_line, deserialize_item

from speech_ed.sampling.index import REASON_CODE, CutIndex
from speech_ed.sampling.stream import ManifestFormatError, _open_at, ensure_gzip_index

SEEK_GAP = 1 << 20  # bytes: a jump forward shorter than this is read through, a longer one is a seek


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Order in which an eager (in-memory) corpus is read in a shuffled pass."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def index_cuts(cuts, num_tokens: Optional[Callable[[Cut], int]] = None,
               keep: Optional[Callable[[Cut], bool]] = None) -> CutIndex:
    """A :class:`CutIndex` of cuts by building each one (about 50 us a cut; ``speech_ed.data.lengths``
    indexes manifests without building cuts). ``keep(cut)`` False marks the cut 'filtered'."""
    durations, tokens, status = [], [], []
    for cut in cuts:
        durations.append(cut.duration)
        ok = keep is None or keep(cut)
        status.append(0 if ok else REASON_CODE["filtered"])
        tokens.append(num_tokens(cut) if (ok and num_tokens is not None) else 0)
    return CutIndex(np.asarray(durations, dtype=np.float64), np.asarray(tokens, dtype=np.int64),
                    np.asarray(status, dtype=np.int8))


class EagerSource:
    """An in-memory list of cuts."""

    kind = "eager"

    def __init__(self, cuts: Sequence[Cut], index: CutIndex, name: str = "cuts"):
        self.cuts, self.index, self.name = list(cuts), index, name

    def pass_order(self, cycle: int, seed: int, shuffle: bool) -> Optional[np.ndarray]:
        return epoch_permutation(len(self.cuts), seed, cycle) if shuffle else None

    def reader(self) -> "_ListReader":
        return _ListReader(self.cuts)

    def materialise(self, payload) -> Cut:
        return payload


class _ListReader:
    def __init__(self, cuts):
        self.cuts = cuts

    def get(self, i: int):
        return self.cuts[i]

    def close(self) -> None:
        pass


class CutSetSource:
    """Any lazy CutSet, read by iterating it (a backward jump re-reads from the start, with a warning)."""

    kind = "lazy"

    def __init__(self, cuts: CutSet, index: CutIndex, name: str = "cuts"):
        self.cuts, self.index, self.name = cuts, index, name

    def pass_order(self, cycle: int, seed: int, shuffle: bool) -> Optional[np.ndarray]:
        return None

    def reader(self) -> "_IterReader":
        return _IterReader(self.cuts)

    def materialise(self, payload) -> Cut:
        return payload


class _IterReader:
    def __init__(self, cuts: CutSet):
        self.cuts, self._it, self._next, self._warned = cuts, None, 0, False

    def get(self, i: int):
        if self._it is None or i < self._next:
            if self._it is not None and not self._warned:
                self._warned = True
                warnings.warn("re-reading a lazy CutSet from its start to reach an earlier cut (time grows with "
                              "the position); give the sampler a .jsonl[.gz] manifest to seek instead")
            self._it, self._next = iter(self.cuts), 0
        while self._next < i:
            next(self._it)
            self._next += 1
        self._next += 1
        return next(self._it)

    def close(self) -> None:
        self._it = None


class JsonlSource:
    """Lhotse cut manifests (``.jsonl`` / ``.jsonl.gz``, one or more files read one after the other).

    Args:
        paths: the manifest files.
        index: their index, with ``file``, ``offset`` and ``extra['line']`` (1-based line numbers).
    """

    kind = "jsonl"

    def __init__(self, paths: Sequence[os.PathLike | str], index: CutIndex, name: Optional[str] = None):
        self.paths = [Path(p) for p in paths]
        if index.file is None or index.offset is None:
            raise ValueError("a JSONL source needs an index with file and offset columns")
        self.index, self.name = index, name or self.paths[0].name

    def pass_order(self, cycle: int, seed: int, shuffle: bool) -> Optional[np.ndarray]:
        return None

    def reader(self) -> "LineReader":
        return LineReader(self.paths, self.index)

    def where(self, i: int) -> str:
        line = self.index.extra.get("line")
        return f"{self.paths[int(self.index.file[i])]}:{int(line[i]) if line is not None else '?'}"

    def materialise(self, payload) -> Cut:
        i, raw = payload
        try:
            return deserialize_item(decode_json_line(raw))
        except Exception as e:  # orjson, json and lhotse raise different types for a bad line
            raise ManifestFormatError(f"{self.where(i)}: not a valid cut manifest line "
                                      f"({type(e).__name__}: {str(e)[:200]})") from None

    def prepare_resume(self) -> None:
        """Build gzip seek indexes now, so restoring a checkpoint seeks instead of decompressing."""
        for p in self.paths:
            if p.name.endswith(".gz"):
                ensure_gzip_index(p)


class LineReader:
    """Record ``i`` of indexed line files: a sequential read when ``i`` grows, a seek when it jumps.

    ``get`` returns ``(i, raw line bytes)``.
    """

    def __init__(self, paths: list[Path], index: CutIndex):
        self.paths, self.file, self.offset = paths, index.file, index.offset
        self._f, self._file_idx, self._pos = None, -1, -1

    def get(self, i: int):
        fi, off = int(self.file[i]), int(self.offset[i])
        if self._f is None or fi != self._file_idx or off < self._pos or off - self._pos > SEEK_GAP:
            self.close()
            self._f, self._file_idx, self._pos = _open_at(self.paths[fi], off), fi, off
        elif off > self._pos:
            self._skip(off - self._pos)
        raw = self._f.readline()
        self._pos = off + len(raw)
        return i, raw

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self._f.read(min(n, 1 << 16))
            if not chunk:
                break
            n -= len(chunk)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        self._f, self._file_idx, self._pos = None, -1, -1


def scan_jsonl(paths: Sequence[os.PathLike | str], num_tokens: Optional[Callable[[Cut], int]] = None,
               keep: Optional[Callable[[Cut], bool]] = None) -> CutIndex:
    """Index ``.jsonl[.gz]`` manifests by building every cut (the slow, general path: any cut type, any
    ``num_tokens``). Lines that are not valid JSON raise :class:`ManifestFormatError` naming file and line."""
    import gzip

    durations, tokens, status, files, offsets, lines = [], [], [], [], [], []
    for fi, path in enumerate(Path(p) for p in paths):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            pos = 0
            for line_no, raw in enumerate(f, start=1):
                start, pos = pos, pos + len(raw)
                if not raw.strip():
                    continue
                try:
                    cut = deserialize_item(decode_json_line(raw))
                except Exception as e:
                    raise ManifestFormatError(f"{path}:{line_no}: not a valid cut manifest line "
                                              f"({type(e).__name__}: {str(e)[:200]})") from None
                ok = keep is None or keep(cut)
                durations.append(cut.duration)
                status.append(0 if ok else REASON_CODE["filtered"])
                tokens.append(num_tokens(cut) if (ok and num_tokens is not None) else 0)
                files.append(fi)
                offsets.append(start)
                lines.append(line_no)
    return CutIndex(np.asarray(durations, dtype=np.float64), np.asarray(tokens, dtype=np.int64),
                    np.asarray(status, dtype=np.int8), np.asarray(files, dtype=np.int32),
                    np.asarray(offsets, dtype=np.int64), {"line": np.asarray(lines, dtype=np.int64)})


def jsonl_paths_of(cuts: CutSet) -> Optional[list[Path]]:
    """The manifest files behind a lazy CutSet read straight from ``.jsonl[.gz]`` (else None)."""
    from speech_ed.sampling.stream import JsonlCutReader

    source = cuts.data
    if isinstance(source, JsonlCutReader):
        return list(source.paths)
    if cuts.is_lazy and type(source).__name__ == "LazyManifestIterator":
        path = str(getattr(source, "path", ""))
        if path.endswith((".jsonl", ".jsonl.gz")):
            return [Path(path)]
    return None


def source_from_cutset(cuts: CutSet, num_tokens: Optional[Callable[[Cut], int]] = None,
                       keep: Optional[Callable[[Cut], bool]] = None, name: str = "cuts") -> Any:
    """The best source for a CutSet: eager, a seekable manifest, or plain iteration."""
    if not cuts.is_lazy:
        listed = list(cuts)
        return EagerSource(listed, index_cuts(listed, num_tokens, keep), name)
    paths = jsonl_paths_of(cuts)
    if paths is not None:
        return JsonlSource(paths, scan_jsonl(paths, num_tokens, keep), name)
    return CutSetSource(cuts, index_cuts(cuts, num_tokens, keep), name)
