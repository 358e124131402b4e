"""Cut streams that can say where they are and start again from there in constant time.

The sampler's checkpoint stores a stream *position*, never the cuts read so far, so restoring does not replay
the epoch (lhotse 1.x's ``load_state_dict`` does, which users report takes hours on large corpora).

- :class:`JsonlCutReader`: ``.jsonl`` / ``.jsonl.gz`` manifests read line by line. Its position is
  ``(file, line, byte offset in the uncompressed text)``. A plain ``.jsonl`` seeks directly; a ``.jsonl.gz``
  seeks through a gzip index (``indexed_gzip``: an access point with a 32 KiB window every 4 MiB), built once
  per manifest file in one decompression pass and cached under ``$SPEECH_ED_CACHE`` (default
  ``~/.cache/speech_ed/gzip_index``); a ``.gz`` under 4 MiB is simply decompressed up to the position. A line
  that is not valid JSON is an error naming the file and line.
- Eager (in-memory) CutSets: the position is an index into the epoch's order.
- Any other lazy CutSet: the position is a count of cuts, and restoring skips that many (O(position), with a
  warning): wrap the manifest in a :class:`JsonlCutReader` to avoid it.

Usage::

    cuts = CutSet(JsonlCutReader("cuts_train.jsonl.gz"))    # a lazy CutSet like CutSet.from_file
    cursor = open_stream(cuts).open(order=None, position=None)
    for cut in cursor: ...; saved = cursor.position
    cursor = open_stream(cuts).open(order=None, position=saved)   # continues after the same cut
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from lhotse import CutSet
from lhotse.serialization import decode_json_line, deserialize_item

GZIP_INDEX_SPACING = 4 * 1024 * 1024  # bytes of uncompressed text between two access points
# Smaller .gz files are not indexed: decompressing up to the position costs at most ~0.1 s.
MIN_INDEXED_BYTES = 4 * 1024 * 1024


class ManifestFormatError(ValueError):
    """A manifest line that cannot be read; the message names the file and the 1-based line number."""


def gzip_index_path(path: Path) -> Path:
    """Cache file of the gzip index of ``path`` (keyed by absolute path, size and modification time)."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    root = Path(os.environ.get("SPEECH_ED_CACHE", Path.home() / ".cache" / "speech_ed")) / "gzip_index"
    return root / f"{path.name}.{key}.gzidx"


def ensure_gzip_index(path: Path) -> Optional[Path]:
    """Build (once) and cache the seek index of a gzip manifest; None when ``indexed_gzip`` is missing."""
    try:
        import indexed_gzip
    except ImportError:
        return None
    if path.stat().st_size < MIN_INDEXED_BYTES:
        return None
    index = gzip_index_path(path)
    if index.is_file():
        return index
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")  # write then rename: never a half index
    with indexed_gzip.IndexedGzipFile(str(path), spacing=GZIP_INDEX_SPACING) as f:
        f.build_full_index()
        f.export_index(str(tmp))
    os.replace(tmp, index)
    return index


def _open_at(path: Path, offset: int):
    """Binary file object of the uncompressed text of ``path``, positioned at byte ``offset``."""
    if not path.name.endswith(".gz"):
        f = open(path, "rb")
        f.seek(offset)
        return f
    if offset == 0:
        return gzip.open(path, "rb")
    index = ensure_gzip_index(path)
    if index is None:
        if path.stat().st_size >= MIN_INDEXED_BYTES:
            warnings.warn(f"indexed_gzip is not installed: resuming in {path} decompresses it up to byte "
                          f"{offset} (time grows with the position)")
        f = gzip.open(path, "rb")
        f.seek(offset)
        return f
    import indexed_gzip

    f = indexed_gzip.IndexedGzipFile(str(path), spacing=GZIP_INDEX_SPACING, index_file=str(index))
    f.seek(offset)
    return f


class JsonlCutReader:
    """Iterable of cuts from one or more ``.jsonl[.gz]`` manifests, in order, that can resume mid-file.

    Args:
        paths: a manifest path or a list of them (read one after the other).
    """

    def __init__(self, paths: os.PathLike | str | Sequence[os.PathLike | str]):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(f"manifest {p} does not exist")

    def __iter__(self) -> Iterator:
        return self.cursor()

    def cursor(self, position: Optional[tuple[int, int, int]] = None) -> "_JsonlCursor":
        """An iterator over the cuts after ``position`` (from the start when None)."""
        return _JsonlCursor(self.paths, tuple(position) if position is not None else (0, 0, 0))

    def prepare_resume(self) -> None:
        """Build the gzip indexes now, so a later restore is a seek and not a decompression pass."""
        for p in self.paths:
            if p.name.endswith(".gz"):
                ensure_gzip_index(p)


class _JsonlCursor:
    def __init__(self, paths: list[Path], position: tuple[int, int, int]):
        self.paths, self.position = paths, position
        self._file = None
        self.last_line: Optional[str] = None  # JSON text of the last cut returned (kept for checkpoints)

    def __iter__(self):
        return self

    def __next__(self):
        file_idx, line_no, offset = self.position
        while file_idx < len(self.paths):
            path = self.paths[file_idx]
            if self._file is None:
                self._file = _open_at(path, offset)
            raw = self._file.readline()
            if not raw:
                self._file.close()
                self._file = None
                file_idx, line_no, offset = file_idx + 1, 0, 0
                self.position = (file_idx, line_no, offset)
                continue
            line_no, offset = line_no + 1, offset + len(raw)
            self.position = (file_idx, line_no, offset)
            if not raw.strip():
                continue
            try:
                cut = deserialize_item(decode_json_line(raw))
                self.last_line = raw.decode("utf-8")
                return cut
            except Exception as e:  # orjson, json and lhotse raise different types for a bad line
                raise ManifestFormatError(f"{path}:{line_no}: not a valid cut manifest line "
                                          f"({type(e).__name__}: {str(e)[:200]})") from None
        raise StopIteration

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def open_manifest(paths) -> CutSet:
    """A lazy CutSet over ``.jsonl[.gz]`` manifests that the sampler can resume in constant time."""
    return CutSet(JsonlCutReader(paths))


class CutStream:
    """One epoch's cuts in order, from a resumable position. Built by :func:`open_stream`."""

    def __init__(self, cuts: CutSet):
        self.cuts = cuts
        source = cuts.data
        self.eager: Optional[list] = None if cuts.is_lazy else list(cuts)
        self.reader: Optional[JsonlCutReader] = None
        if isinstance(source, JsonlCutReader):
            self.reader = source
        elif cuts.is_lazy and type(source).__name__ == "LazyManifestIterator":
            path = str(getattr(source, "path", ""))
            if path.endswith((".jsonl", ".jsonl.gz")):  # CutSet.from_file: read the same file ourselves
                self.reader = JsonlCutReader(path)
        self.kind = "eager" if self.eager is not None else "jsonl" if self.reader is not None else "lazy"
        self._warned = False

    def open(self, order: Optional[Sequence[int]], position: Any = None) -> "_Cursor":
        """Cuts of the epoch starting after ``position``; ``order`` permutes an eager CutSet."""
        if self.kind == "eager":
            return _EagerCursor(self.eager, order, position or 0)
        if self.kind == "jsonl":
            return _Cursor(self.reader.cursor(position))
        return _CountingCursor(self.cuts, position or 0, self)

    def prepare_resume(self) -> None:
        if self.reader is not None:
            self.reader.prepare_resume()


class _Cursor:
    def __init__(self, inner: _JsonlCursor):
        self.inner = inner

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.inner)

    @property
    def last_line(self) -> Optional[str]:
        return self.inner.last_line

    @property
    def position(self):
        return list(self.inner.position)


class _EagerCursor:
    def __init__(self, cuts: list, order: Optional[Sequence[int]], position: int):
        self.cuts, self.order, self.position = cuts, order, int(position)

    def __iter__(self):
        return self

    def __next__(self):
        if self.position >= len(self.cuts):
            raise StopIteration
        i = self.position if self.order is None else int(self.order[self.position])
        self.position += 1
        return self.cuts[i]


class _CountingCursor:
    def __init__(self, cuts: CutSet, position: int, stream: CutStream):
        self.it, self.position = iter(cuts), 0
        if position and not stream._warned:
            stream._warned = True
            warnings.warn("resuming a lazy CutSet that is not a .jsonl[.gz] manifest re-reads "
                          f"{position} cuts (time grows with the position); open it with "
                          "speech_ed.sampling.stream.open_manifest to resume in constant time")
        for _ in range(position):
            next(self.it)
            self.position += 1

    def __iter__(self):
        return self

    def __next__(self):
        cut = next(self.it)
        self.position += 1
        return cut


def open_stream(cuts: CutSet) -> CutStream:
    """Wrap a CutSet for resumable reading (see the module docstring for what each kind costs)."""
    return CutStream(cuts)
