"""Read an offline W&B run (``offline-run-*/run-<id>.wandb``) with wandb's own protobuf schema, for tests.

wandb 0.31 has no Python reader for its run files any more (the Go core writes them), so the framing is read
here and every record is parsed with ``wandb.proto.wandb_internal_pb2.Record``. The framing is a LevelDB-style
log: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
``crc32 (4) | length (2, little-endian) | type (1)`` + payload, where type 1 is a whole record and 2/3/4 are
the first/middle/last pieces of one that crosses a block boundary.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """Every ``Record`` of a run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (header {data[:4]!r})")
    records, pieces, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: too small for a chunk header
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zero padding at the end of the last block
            break
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            records.append(payload)
        elif kind == FIRST:
            pieces = payload
        elif kind == MIDDLE:
            pieces += payload
        elif kind == LAST:
            records.append(pieces + payload)
    out = []
    for payload in records:
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def _value(item):
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value") if "value" in [o.name for o in item.DESCRIPTOR.oneofs] else None
    return getattr(item, kind) if kind else None


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(path: str | Path) -> list[dict]:
    """One dict per logged history row: metric -> value (keys as logged, e.g. ``train/input_padding``)."""
    return [{_key(i): _value(i) for i in r.history.item} for r in read_records(path)
            if r.WhichOneof("record_type") == "history"]


def run_record(path: str | Path):
    """The run's ``RunRecord`` (display_name, run_group, job_type, project, ...)."""
    for r in read_records(path):
        if r.WhichOneof("record_type") == "run":
            return r.run
    raise ValueError(f"{path} holds no run record")


def config(path: str | Path) -> dict:
    """The run's config: the run record's, updated by later config records."""
    records = read_records(path)
    out = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        out.update({_key(i): json.loads(i.value_json) for i in items})
    return out


def offline_runs(root: str | Path) -> list[Path]:
    """Run files under ``root/wandb/offline-run-*``, oldest first (to the second: runs started in the same
    second come in any order, so tell them apart with :func:`run_by_name`)."""
    return sorted(Path(root).glob("wandb/offline-run-*/run-*.wandb"))


def run_by_name(root: str | Path, display_name: str) -> Path:
    """The one offline run under ``root`` whose display name is ``display_name``."""
    found = [p for p in offline_runs(root) if run_record(p).display_name == display_name]
    if len(found) != 1:
        raise ValueError(f"{len(found)} offline runs named {display_name!r} under {root}")
    return found[0]
