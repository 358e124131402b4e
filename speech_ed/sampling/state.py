"""Planned items and steps as flat tensors: compact in a checkpoint, and loadable with ``weights_only=True``.

An item is ``(key: int, duration_s, tokens, bucket)``; a step is a bucket and one batch of items per rank.
"""

from __future__ import annotations

from typing import Any

import torch

Item = tuple


def pack_batches(batches: list[list[Item]]) -> dict[str, torch.Tensor]:
    """Lists of items as flat tensors (keys must be ints): ``sizes``, ``keys``, ``durations``, ``tokens``,
    ``buckets``."""
    flat = [it for b in batches for it in b]
    return {"sizes": torch.tensor([len(b) for b in batches], dtype=torch.int64),
            "keys": torch.tensor([int(it[0]) for it in flat], dtype=torch.int64),
            "durations": torch.tensor([it[1] for it in flat], dtype=torch.float64),
            "tokens": torch.tensor([it[2] for it in flat], dtype=torch.int64),
            "buckets": torch.tensor([it[3] for it in flat], dtype=torch.int64)}


def unpack_batches(packed: dict[str, torch.Tensor]) -> list[list[Item]]:
    cols = [packed[k].tolist() for k in ("keys", "durations", "tokens", "buckets")]
    items = list(zip(*cols))
    out, i = [], 0
    for n in packed["sizes"].tolist():
        out.append(items[i:i + n])
        i += n
    return out


def pack_steps(steps: list) -> dict[str, Any]:
    """Steps as tensors: their buckets, ranks per step and :func:`pack_batches` of all their batches."""
    return {"buckets": [s.bucket for s in steps], "ranks": [len(s.batches) for s in steps],
            "batches": pack_batches([b for s in steps for b in s.batches])}


def unpack_steps(packed: dict[str, Any]) -> list:
    from speech_ed.sampling.planner import Step

    batches = unpack_batches(packed["batches"])
    steps, i = [], 0
    for bucket, n in zip(packed["buckets"], packed["ranks"]):
        steps.append(Step(bucket, batches[i:i + n]))
        i += n
    return steps
