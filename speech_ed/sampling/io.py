"""Versioned YAML files: ``bucket_bins.yaml`` (estimate-bins) and ``bucket_batch_sizes.yaml`` (OOMptimizer).

``bucket_bins.yaml``::

    format: speech_ed.bucket_bins
    version: 1
    kind: 2d                 # or 1d
    method: dp               # equal | dp | manual
    num_buckets: 3
    buckets:                 # upper bounds: [max_duration_s, max_tokens] (2d) or max_duration_s (1d)
    - [4.2, 21]
    - [4.2, 30]
    - [9.87, 52]
    max_tps: [6.1, 6.1, 5.9] # 2d, one per bucket (optional)
    ...                      # provenance: tokenizer, prompt, num_cuts, dropped, padding_bound

``bucket_batch_sizes.yaml``::

    format: speech_ed.bucket_batch_sizes
    version: 1
    batch_sizes: [352, 308, 280]
    buckets: [...]           # optional copy of the bins they were measured on (checked when given)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from speech_ed.atomic import atomic_write_text  # noqa: F401  (re-exported for callers of sampling.io)
from speech_ed.sampling.bins import BucketBins

BINS_FORMAT = "speech_ed.bucket_bins"
BATCH_SIZES_FORMAT = "speech_ed.bucket_batch_sizes"
VERSION = 1
PathLike = Union[str, os.PathLike]


def _dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


def _read_yaml(path: PathLike, expected_format: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'format: {expected_format}'")
    fmt = data.get("format", expected_format)
    if fmt != expected_format:
        raise ValueError(f"{path}: field 'format' is {fmt!r}, expected {expected_format!r}")
    version = data.get("version", VERSION)
    if version != VERSION:
        raise ValueError(f"{path}: field 'version' is {version!r}; this speech_ed reads version {VERSION}")
    return data


def bins_to_dict(bins: BucketBins) -> dict[str, Any]:
    """The YAML mapping of ``bins`` (metadata keys follow the bins)."""
    if bins.is_2d:
        buckets = [[d, t] for d, t in zip(bins.durations, bins.tokens)]
    else:
        buckets = list(bins.durations)
    data: dict[str, Any] = {"format": BINS_FORMAT, "version": VERSION, "kind": "2d" if bins.is_2d else "1d",
                            "method": bins.method, "num_buckets": bins.num_buckets, "buckets": buckets}
    if bins.max_tps is not None:
        data["max_tps"] = list(bins.max_tps)
    for k, v in bins.metadata.items():
        if k not in data:
            data[k] = v
    return data


def bins_from_dict(data: dict, where: str = "bucket bins") -> BucketBins:
    """Inverse of :func:`bins_to_dict`; errors name ``where`` and the field."""
    buckets = data.get("buckets")
    if not isinstance(buckets, list) or not buckets:
        raise ValueError(f"{where}: field 'buckets' must be a non-empty list")
    kind = data.get("kind", "2d" if isinstance(buckets[0], (list, tuple)) else "1d")
    if kind not in ("1d", "2d"):
        raise ValueError(f"{where}: field 'kind' is {kind!r}, expected '1d' or '2d'")
    tokens = None
    for i, b in enumerate(buckets):
        if kind == "2d" and (not isinstance(b, (list, tuple)) or len(b) != 2):
            raise ValueError(f"{where}: buckets[{i}] = {b!r}; 2d buckets are [max_duration_s, max_tokens]")
        if kind == "1d" and isinstance(b, (list, tuple)):
            raise ValueError(f"{where}: buckets[{i}] = {b!r} but 'kind' is 1d (one max_duration_s each)")
    try:
        durations = [float(b[0] if kind == "2d" else b) for b in buckets]
        if kind == "2d":
            tokens = [int(b[1]) for b in buckets]
        max_tps = data.get("max_tps")
        if max_tps is not None:
            max_tps = [float(x) for x in max_tps]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: fields 'buckets'/'max_tps' must hold numbers: {e}") from e
    n = data.get("num_buckets", len(buckets))
    if n != len(buckets):
        raise ValueError(f"{where}: field 'num_buckets' is {n} but 'buckets' has {len(buckets)} entries")
    meta = {k: v for k, v in data.items()
            if k not in ("format", "version", "kind", "method", "num_buckets", "buckets", "max_tps")}
    return BucketBins(durations, tokens, max_tps, data.get("method", "manual"), meta, where=where)


def save_bucket_bins(path: PathLike, bins: BucketBins) -> None:
    """Write ``bucket_bins.yaml`` atomically."""
    atomic_write_text(path, _dump(bins_to_dict(bins)))


def load_bucket_bins(path: PathLike) -> BucketBins:
    """Read and validate ``bucket_bins.yaml``."""
    return bins_from_dict(_read_yaml(path, BINS_FORMAT), where=str(path))


def save_bucket_batch_sizes(path: PathLike, batch_sizes: list[int], bins: Optional[BucketBins] = None,
                            **metadata: Any) -> None:
    """Write ``bucket_batch_sizes.yaml`` atomically (with a copy of ``bins`` so loading can check them)."""
    data: dict[str, Any] = {"format": BATCH_SIZES_FORMAT, "version": VERSION,
                            "batch_sizes": [int(b) for b in batch_sizes]}
    if bins is not None:
        if len(batch_sizes) != bins.num_buckets:
            raise ValueError(f"{len(batch_sizes)} batch sizes for {bins.num_buckets} buckets")
        data["buckets"] = bins_to_dict(bins)["buckets"]
    data.update(metadata)
    atomic_write_text(path, _dump(data))


def read_bucket_batch_sizes(path: PathLike) -> tuple[list[int], dict]:
    """Read ``bucket_batch_sizes.yaml``: its sizes (integers >= 1) and every field of the file (provenance).

    Also accepts NeMo's key name ``bucket_batch_size``.
    """
    data = _read_yaml(path, BATCH_SIZES_FORMAT)
    sizes = data.get("batch_sizes", data.get("bucket_batch_size"))
    if not isinstance(sizes, list) or not sizes:
        raise ValueError(f"{path}: field 'batch_sizes' must be a non-empty list of integers")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ValueError(f"{path}: field 'batch_sizes' must hold integers >= 1, got {sizes}")
    return [int(s) for s in sizes], data


def regenerate_hint(data: dict, path: PathLike) -> str:
    """How to measure the batch sizes of ``path`` again (its recorded command, else a template)."""
    cmd = data.get("command") or ("speech-ed oomptimize --config <your config> --bins <bucket_bins.yaml> "
                                  f"--probe cuda --out {path}")
    return f"regenerate it with: {cmd}"


def check_batch_sizes_belong(sizes: list[int], data: dict, bins: BucketBins, path: PathLike,
                             bins_where: str = "", require_recorded: bool = False) -> None:
    """The one definition of "these batch sizes belong to these bins": one size per bucket and, when the file
    records the bins it was measured on (field ``buckets``, written by :func:`save_bucket_batch_sizes`), the
    same buckets exactly (a YAML round trip keeps every number).

    Args:
        sizes, data: what :func:`read_bucket_batch_sizes` returned for ``path``.
        bins: the bins the sizes are used with; ``bins_where`` names their file in errors.
        require_recorded: refuse a file without ``buckets`` (training: the sizes must be traceable to bins).

    Raises:
        ValueError: naming both files and what differs.
    """
    where = f" ({bins_where})" if bins_where else ""
    hint = regenerate_hint(data, path)
    if len(sizes) != bins.num_buckets:
        raise ValueError(f"{path}: {len(sizes)} batch sizes but the bucket bins{where} have {bins.num_buckets} "
                         f"buckets; {hint}")
    recorded = data.get("buckets")
    if recorded is None:
        if require_recorded:
            raise ValueError(f"{path}: no field 'buckets', so the bins these sizes were measured on are "
                             f"unknown; {hint}")
        return
    expected = bins_to_dict(bins)["buckets"]
    if recorded != expected:
        i = next((i for i, (a, b) in enumerate(zip(recorded, expected)) if a != b),
                 min(len(recorded), len(expected)))
        mine = recorded[i] if i < len(recorded) else None
        raise ValueError(f"{path}: bucket {i} is {mine} in field 'buckets' but {expected[i]} in the bucket "
                         f"bins{where}: the batch sizes were measured for other bins; {hint}")


def load_bucket_batch_sizes(path: PathLike, bins: Optional[BucketBins] = None) -> list[int]:
    """Read ``bucket_batch_sizes.yaml``; with ``bins``, check they belong to them
    (:func:`check_batch_sizes_belong`)."""
    sizes, data = read_bucket_batch_sizes(path)
    if bins is not None:
        check_batch_sizes_belong(sizes, data, bins, path)
    return sizes


@dataclass(frozen=True)
class BinsAndBatchSizes:
    """Bucket bins and the per-bucket batch sizes measured on them, read once and checked together."""

    bins: Optional[BucketBins]
    batch_sizes: Optional[list[int]]
    bins_path: str = ""
    batch_sizes_path: str = ""
    batch_sizes_fields: dict = field(default_factory=dict)
    """Every field of ``bucket_batch_sizes.yaml`` (provenance: ``model_hash``, ``probe``, ``command``, ...)."""


def load_bins_and_batch_sizes(bins_path: Optional[PathLike], batch_sizes_path: Optional[PathLike] = None,
                              require_recorded: bool = False) -> BinsAndBatchSizes:
    """Read ``bucket_bins.yaml`` and ``bucket_batch_sizes.yaml`` once and check the sizes belong to the bins.

    What training (data module, callbacks), the OOMptimizer's model check and ``padding-report`` use; empty
    or None paths mean "none".

    Raises:
        ValueError: sizes without bins, or sizes that do not belong to the bins (both files named).
    """
    bins = load_bucket_bins(bins_path) if bins_path else None
    if not batch_sizes_path:
        return BinsAndBatchSizes(bins, None, str(bins_path or ""))
    if bins is None:
        raise ValueError(f"{batch_sizes_path}: per-bucket batch sizes need the bucket bins they were measured on")
    sizes, data = read_bucket_batch_sizes(batch_sizes_path)
    check_batch_sizes_belong(sizes, data, bins, batch_sizes_path, str(bins_path), require_recorded)
    return BinsAndBatchSizes(bins, sizes, str(bins_path), str(batch_sizes_path), data)
