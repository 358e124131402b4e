"""Manifest files that can be read from any byte offset: the seeks behind the sampler's constant-time restore.

The sampler's checkpoint stores positions, never the cuts read so far, so restoring does not replay the epoch
(lhotse 1.x's ``load_state_dict`` does, which users report takes hours on large corpora). A restore reads the
lines of the cuts the sampler had buffered by their byte offsets (:class:`speech_ed.sampling.sources.LineReader`):

- a plain ``.jsonl`` seeks directly;
- a ``.jsonl.gz`` seeks through a gzip index (``indexed_gzip``: an access point with a 32 KiB window every
  4 MiB), built once per manifest file in one decompression pass and cached under ``$SPEECH_ED_CACHE`` (default
  ``~/.cache/speech_ed/gzip_index``); a ``.gz`` under 4 MiB is simply decompressed up to the offset.

:class:`JsonlCutReader` / :func:`open_manifest` give a lazy CutSet over such files whose bad lines are errors
naming the file and line (``CutSet.from_file`` reports neither).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

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
