"""Training corpora from a data config: Lhotse manifests, Lhotse Shar directories, NeMo JSON-lines manifests.

Each input becomes a source the sampler reads (:mod:`speech_ed.sampling.sources`): an index of lengths and skip
reasons built once and cached (:mod:`speech_ed.data.indexing`), manifest lines read on the rank that trains on
them, and cuts built from those lines.

- ``lhotse``: ``.jsonl[.gz]`` cut manifests; a cut without a language or task gets the input's defaults.
- ``shar``: a directory written by ``CutSet.to_shar`` / ``lhotse shar export`` (``cuts.NNNNNN.jsonl.gz`` and
  ``recording.NNNNNN.tar``). Its audio is read straight out of the tar shards: the index keeps each cut's byte
  range in its tar, and the DataLoader worker reads those bytes (:func:`resolve_audio`), so nothing is unpacked
  and each rank reads the audio of its own cuts only. lhotse's ``CutSet.from_shar`` streams every member of
  every shard to every reader, which at 16 ranks would read all audio 16 times; the cut lines and the audio
  placeholders are still lhotse's own (``fill_shar_placeholder``), and a test checks that cuts and audio equal
  ``CutSet.from_shar``'s. With shuffling, the shard order is drawn anew for each pass over the corpus.
- ``nemo``: ``audio_filepath``, ``duration``, ``text`` and optional ``offset``, ``lang`` / ``source_lang``,
  ``target_lang``, ``taskname`` (asr / ast / s2t_translation ...), ``answer`` (the target text), one JSON object
  a line. lhotse 1.33 has no reader for it (NeMo's ``LazyNeMoIterator`` lives in NeMo); the recording is
  opened (its header read) in the worker, not while sampling.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import orjson
from lhotse import MonoCut, Recording, SupervisionSegment
from lhotse.cut import Cut

from speech_ed.data.indexing import NO_DEFAULTS, Defaults, cached_index, nemo_target, with_defaults
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.sampling.index import CutIndex
from speech_ed.sampling.sources import JsonlSource, epoch_permutation
from speech_ed.sampling.stream import ManifestFormatError

FORMATS = ("auto", "lhotse", "shar", "nemo")


def detect_format(path: str | Path) -> str:
    """'shar' for a directory, 'nemo' when the first line has ``audio_filepath``, else 'lhotse'."""
    import gzip

    path = Path(path)
    if path.is_dir():
        return "shar"
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return "lhotse"  # reported with its line number when indexed
                return "nemo" if isinstance(first, dict) and "audio_filepath" in first else "lhotse"
    return "lhotse"


class LhotseSource(JsonlSource):
    """Lhotse cut manifests with corpus-level defaults for language and task."""

    def __init__(self, paths, index: CutIndex, name: str, defaults: Defaults = NO_DEFAULTS):
        super().__init__(paths, index, name)
        self.defaults = defaults

    def materialise(self, payload) -> Cut:
        cut = super().materialise(payload)
        if self.defaults != NO_DEFAULTS and cut.supervisions:
            sup = cut.supervisions[0]
            sup.language, sup.custom = with_defaults(sup.language, sup.custom, self.defaults)
        return cut


class SharSource(LhotseSource):
    """A Lhotse Shar directory; audio comes out of its tar shards in the DataLoader worker."""

    kind = "shar"

    def __init__(self, directory, index: CutIndex, name: str, defaults: Defaults = NO_DEFAULTS):
        self.directory = Path(directory)
        self.tars = shar_tars(self.directory)
        super().__init__(shar_cut_files(self.directory), index, name, defaults)
        self._shard_starts = np.searchsorted(index.file, np.arange(len(self.paths)))

    def pass_order(self, cycle: int, seed: int, shuffle: bool) -> Optional[np.ndarray]:
        if not shuffle or len(self.paths) < 2:
            return None
        bounds = np.append(self._shard_starts, len(self.index))
        shards = epoch_permutation(len(self.paths), seed, cycle)
        return np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in shards])

    def materialise(self, payload) -> Cut:
        i, _ = payload
        cut = super().materialise(payload)
        offset, size = int(self.index.extra["tar_offset"][i]), int(self.index.extra["tar_size"][i])
        if offset >= 0:
            cut.custom = {**(cut.custom or {}),
                          "shar_audio": [str(self.tars[int(self.index.file[i])]), offset, size]}
        return cut


class NemoSource(JsonlSource):
    """A NeMo JSON-lines manifest (one utterance a line)."""

    kind = "nemo"

    def __init__(self, paths, index: CutIndex, name: str, defaults: Defaults = NO_DEFAULTS, pnc: bool = False):
        super().__init__(paths, index, name)
        self.defaults, self.pnc = defaults, pnc

    def materialise(self, payload) -> Cut:
        i, raw = payload
        try:
            d = orjson.loads(raw)
            target = nemo_target(d, self.defaults, True)
        except Exception as e:
            raise ManifestFormatError(f"{self.where(i)}: not a valid NeMo manifest line ({e})") from None
        cut_id = f"{self.name}-{int(self.index.extra['line'][i]):08d}"
        duration = float(d["duration"])
        custom = {"task": target.task}
        if target.task == "translate":
            custom.update(translation=d.get("answer", ""), target_language=target.target_lang)
        text = d.get("text") if target.task == "translate" or "answer" not in d else d["answer"]
        sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=duration, text=text,
                                 language=target.source_lang, custom=custom)
        path = Path(d["audio_filepath"])
        if not path.is_absolute():  # NeMo resolves relative audio paths against the manifest's folder
            path = self.paths[int(self.index.file[i])].parent / path
        return MonoCut(id=cut_id, start=float(d.get("offset") or 0.0), duration=duration, channel=0,
                       supervisions=[sup], custom={"audio_file": str(path)})


def resolve_audio(cut: Cut) -> Cut:
    """Give a cut from a Shar or NeMo source its audio (called in the DataLoader worker, before loading).

    Shar: the placeholder recording gets the bytes of its tar member (read with one seek). NeMo: a recording
    from the audio file's header. Any other cut is returned unchanged.
    """
    custom = getattr(cut, "custom", None) or {}
    if "shar_audio" in custom:
        from lhotse.shar.utils import fill_shar_placeholder

        tar, offset, size = custom["shar_audio"]
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        fill_shar_placeholder(cut.recording, data=data, tarpath=Path(tar))
    elif "audio_file" in custom and cut.recording is None:
        recording = Recording.from_file(custom["audio_file"], recording_id=cut.id)
        cut.recording = recording
        for sup in cut.supervisions:
            sup.recording_id = recording.id
    return cut


def shar_cut_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("cuts.*.jsonl*"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no cuts.NNNNNN.jsonl[.gz] shards (is it a Lhotse Shar dir?)")
    return files


def shar_tars(directory: Path) -> list[Path]:
    cuts = shar_cut_files(directory)
    tars = sorted(directory.glob("recording.*.tar"))
    if len(tars) != len(cuts):
        raise FileNotFoundError(f"{directory}: {len(cuts)} cut shards but {len(tars)} recording.NNNNNN.tar shards")
    return tars


def tar_members(path: Path) -> list[tuple[str, int, int]]:
    """``(name, data offset, size)`` of every member, read from the headers (seeking over the data)."""
    with tarfile.open(path, "r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar]


def add_shar_offsets(directory: Path):
    """An ``extra`` hook for :func:`cached_index`: each cut's audio byte range in its shard's tar."""
    def add(index: CutIndex) -> CutIndex:
        offsets = np.full(len(index), -1, dtype=np.int64)
        sizes = np.zeros(len(index), dtype=np.int64)
        for s, tar in enumerate(shar_tars(directory)):
            rows = np.flatnonzero(index.file == s)
            pairs = tar_members(tar)
            if len(pairs) != 2 * len(rows):
                raise ValueError(f"{tar}: {len(pairs)} members for {len(rows)} cuts (expected data + json each)")
            for k, row in enumerate(rows):
                name, offset, size = pairs[2 * k]
                if not name.endswith(".nodata"):
                    offsets[row], sizes[row] = offset, size
        index.extra.update(tar_offset=offsets, tar_size=sizes)
        return index
    return add


@dataclass
class InputSpec:
    """One training input, as resolved from ``data.inputs`` (see :class:`speech_ed.config.InputConfig`)."""

    path: str
    format: str = "auto"
    name: str = ""
    weight: Optional[float] = None
    language: Optional[str] = None
    task: Optional[str] = None
    target_language: Optional[str] = None


def open_source(spec: InputSpec, tokenizer: Tokenizer, cache_dir: str | Path, pnc: bool = False,
                num_workers: Optional[int] = None):
    """The sampler source of one input (its index built once and cached under ``cache_dir``)."""
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(f"training input {path} does not exist")
    fmt = detect_format(path) if spec.format == "auto" else spec.format
    name = spec.name or (path.name if path.is_dir() else path.name.split(".")[0])
    defaults = Defaults(spec.language, spec.task, spec.target_language)
    if fmt == "shar":
        files = shar_cut_files(path)
        index = cached_index("shar", files, tokenizer, cache_dir, defaults, pnc, extra=add_shar_offsets(path),
                             num_workers=num_workers)
        return SharSource(path, index, name, defaults)
    if fmt == "nemo":
        index = cached_index("nemo", [path], tokenizer, cache_dir, defaults, pnc, num_workers=num_workers)
        return NemoSource([path], index, name, defaults, pnc)
    if fmt != "lhotse":
        raise ValueError(f"input {path}: unknown format {fmt!r}; expected one of {FORMATS}")
    index = cached_index("lhotse", [path], tokenizer, cache_dir, defaults, pnc, num_workers=num_workers)
    return LhotseSource([path], index, name, defaults)


def open_sources(specs: Sequence[InputSpec], tokenizer: Tokenizer, cache_dir: str | Path, pnc: bool = False,
                 min_duration_s: Optional[float] = None, max_duration_s: Optional[float] = None,
                 num_workers: Optional[int] = None) -> list:
    """Sources of all inputs, with utterances outside ``[min_duration_s, max_duration_s]`` marked skipped."""
    sources = []
    for spec in specs:
        src = open_source(spec, tokenizer, cache_dir, pnc, num_workers)
        src.index = src.index.with_duration_limits(min_duration_s, max_duration_s)
        sources.append(src)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"training inputs need distinct names, got {names}; set data.inputs[i].name")
    return sources
