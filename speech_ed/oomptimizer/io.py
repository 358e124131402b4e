"""``bucket_batch_sizes.yaml``: writing it with its provenance, and the check training runs before using it.

The file is the sampling package's format (:func:`speech_ed.sampling.io.save_bucket_batch_sizes`) plus
what the OOMptimizer knows: the probe, the device, the memory limit, the precision, the search's trials and a
hash of the model dimensions. Training reads bins and sizes once
(:func:`speech_ed.sampling.io.load_bins_and_batch_sizes`, which checks the sizes belong to the bins) and calls
:func:`check_model_hash` on the file's fields; :func:`check_batch_sizes_match` does both for one file. The
errors say how to regenerate the file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from speech_ed.models.dims import ModelDims
from speech_ed.oomptimizer.batch import tokens_for_1d_bin
from speech_ed.oomptimizer.probes import GiB, Probe
from speech_ed.oomptimizer.runner import BucketResult
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.io import (
    check_batch_sizes_belong,
    read_bucket_batch_sizes,
    regenerate_hint,
    save_bucket_batch_sizes,
)

PathLike = Union[str, os.PathLike]
BinsLike = Union[BucketBins, Sequence[Sequence[float]]]
RECOVERY_DOC = "docs/OOMPTIMIZER.md#if-training-still-runs-out-of-memory"


def bins_as_pairs(bins: BinsLike) -> list[tuple[float, int]]:
    """``(max_duration_s, max_tokens)`` per bucket; 1D bins get :func:`tokens_for_1d_bin` tokens."""
    if isinstance(bins, BucketBins):
        if bins.is_2d:
            return [(float(d), int(t)) for d, t in zip(bins.durations, bins.tokens)]
        return [(float(d), tokens_for_1d_bin(d)) for d in bins.durations]
    return [(float(b[0]), int(b[1])) for b in bins]


def model_config_hash(dims: ModelDims) -> str:
    """Short stable hash of every model dimension (the vocabulary size included)."""
    blob = json.dumps(asdict(dims), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def save_batch_sizes(path: PathLike, bins: BucketBins, results: Sequence[BucketResult],
                     batch_sizes: Sequence[int], probe: Probe, dims: ModelDims, precision: str,
                     memory_budget_gib: Optional[float], memory_fraction: float, safety_margin: float,
                     command: str, search: dict) -> None:
    """Write ``bucket_batch_sizes.yaml`` atomically.

    Args:
        path: output file.
        bins: the bins searched (copied into the file so training can check them).
        results: per-bucket search results (same order as the bins).
        batch_sizes: the sizes training will use (after the safety margin).
        probe: the probe used (name, device, limit).
        dims: model dimensions (hashed).
        precision: trainer precision the step ran with.
        memory_budget_gib, memory_fraction, safety_margin: the command's settings.
        command: the command line that regenerates the file.
        search: search settings (start, rel_gap).
    """
    import torch

    meta = {
        "probe": probe.name,
        "device": probe.device_name,
        "memory_budget_gib": memory_budget_gib,
        "memory_fraction": memory_fraction,
        "memory_limit_gib": round(probe.limit_bytes / GiB, 4),
        "safety_margin": safety_margin,
        "dtype": precision,
        "model_hash": model_config_hash(dims),
        "max_batch_sizes": [r.batch_size for r in results],
        "probed_tokens": [r.max_tokens for r in results],
        "peak_memory_gib": [None if r.peak_bytes is None else round(r.peak_bytes / GiB, 4) for r in results],
        "trials": [len(r.trials) for r in results],
        "search": dict(search),
        "torch": str(torch.__version__),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command,
    }
    save_bucket_batch_sizes(path, list(batch_sizes), bins, **meta)


def check_batch_sizes_match(batch_sizes_file: PathLike, bins: BinsLike, model_dims: ModelDims) -> list[int]:
    """Refuse per-bucket batch sizes measured for another model or other bins.

    Args:
        batch_sizes_file: ``bucket_batch_sizes.yaml`` written by ``speech-ed oomptimize``.
        bins: the bucket bins training uses (:class:`BucketBins` or ``(max_duration_s, max_tokens)`` pairs).
        model_dims: the dimensions the model is built from (vocabulary size filled in).

    Returns:
        The batch sizes, one per bucket.

    Raises:
        ValueError: the file's model hash or bins differ from training's; the message names the field and
            the command that regenerates the file.
    """
    if not isinstance(bins, BucketBins):
        bins = BucketBins([float(b[0]) for b in bins], [int(b[1]) for b in bins])
    sizes, data = read_bucket_batch_sizes(batch_sizes_file)
    check_model_hash(data, batch_sizes_file, model_dims)
    check_batch_sizes_belong(sizes, data, bins, batch_sizes_file, require_recorded=True)
    return sizes


def check_model_hash(data: dict, path: PathLike, model_dims: ModelDims) -> None:
    """Refuse the fields ``data`` of ``bucket_batch_sizes.yaml`` when they were measured for another model.

    Raises:
        ValueError: no or another ``model_hash``, with the command that regenerates the file.
    """
    hint = regenerate_hint(data, path)
    expected = model_config_hash(model_dims)
    recorded = data.get("model_hash")
    if recorded is None:
        raise ValueError(f"{path}: no field 'model_hash', so these batch sizes cannot be matched to the "
                         f"model; {hint} (or, for hand-written sizes, add 'model_hash: {expected}')")
    if recorded != expected:
        raise ValueError(f"{path}: field 'model_hash' is {recorded} but the model being trained hashes to "
                         f"{expected}: the batch sizes were measured for other model dimensions; {hint}")


def out_of_memory_advice(batch_sizes_file: Optional[PathLike]) -> str:
    """Message for training to print when a step runs out of memory with OOMptimizer batch sizes."""
    if not batch_sizes_file or not Path(batch_sizes_file).is_file():
        return ("out of memory: lower data.max_duration_s, or measure per-bucket batch sizes with "
                "`speech-ed oomptimize` (see " + RECOVERY_DOC + ")")
    data = yaml.safe_load(Path(batch_sizes_file).read_text(encoding="utf-8")) or {}
    fraction = data.get("memory_fraction", 0.9)
    lower = max(round(float(fraction) - 0.15, 2), 0.3)
    cmd = data.get("command") or "speech-ed oomptimize ..."
    return (f"out of memory with the batch sizes of {batch_sizes_file} (probe {data.get('probe', '?')}, "
            f"memory fraction {fraction}). Re-run the OOMptimizer with a lower fraction, e.g. "
            f"`{_with_fraction(cmd, lower)}`, and restart from the last checkpoint (see {RECOVERY_DOC})")


def _with_fraction(command: str, fraction: float) -> str:
    """``command`` with its ``--memory-fraction`` replaced (or added)."""
    parts = command.split()
    if "--memory-fraction" in parts:
        i = parts.index("--memory-fraction")
        if i + 1 < len(parts):
            parts[i + 1] = f"{fraction:g}"
            return " ".join(parts)
    return " ".join(parts + ["--memory-fraction", f"{fraction:g}"])
