"""Read and write ``.nemo`` archives without NeMo.

A ``.nemo`` file is a tar archive (plain or gzip) holding ``model_config.yaml``, ``model_weights.ckpt`` (a
``torch.save`` of the state dict) and artifacts such as tokenizer models, which the config names as
``nemo:<file>``. A folder with the same files (an extracted archive) is read as well.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONFIG, WEIGHTS = "model_config.yaml", "model_weights.ckpt"


class NemoFormatError(ValueError):
    """The file is not a .nemo archive this importer can read, or holds something it cannot map."""


@dataclass
class NemoArchive:
    """The contents of a .nemo archive.

    Attributes:
        config: the model config (``model_config.yaml``) as plain dicts and lists, interpolations resolved.
        state_dict: parameter and buffer tensors by NeMo name.
        files: every other member by base name (tokenizer models, vocabularies, ...), as bytes.
    """

    config: dict
    state_dict: dict[str, torch.Tensor]
    files: dict[str, bytes] = field(default_factory=dict)

    def artifact(self, ref: str | None, key: str) -> bytes:
        """Bytes of the artifact a config value ``ref`` names (``nemo:NAME`` or a path whose base name is in
        the archive); ``key`` is the config key, for the error message."""
        if not ref:
            raise NemoFormatError(f"config key {key} is empty: the archive names no file for it")
        name = os.path.basename(ref.removeprefix("nemo:"))
        if name not in self.files:
            raise NemoFormatError(f"config key {key}={ref!r}: no member {name!r} in the archive")
        return self.files[name]


def is_nemo_path(path: str | os.PathLike) -> bool:
    """True for a ``.nemo`` file or a folder holding ``model_config.yaml`` and ``model_weights.ckpt``."""
    p = Path(path)
    if p.is_dir():
        return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()
    return p.suffix == ".nemo" or (p.is_file() and tarfile.is_tarfile(p))


def _parse_config(text: str) -> dict:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        conf = OmegaConf.create(text)
        return OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise NemoFormatError(f"{CONFIG}: key {key}: {str(e).splitlines()[0]}") from None


def read_nemo(path: str | os.PathLike) -> NemoArchive:
    """Read a .nemo archive (or its extracted folder). Raises NemoFormatError naming what is missing."""
    p = Path(path)
    members: dict[str, bytes] = {}
    if p.is_dir():
        for f in p.rglob("*"):
            if f.is_file():
                members[f.name] = f.read_bytes()
    else:
        try:
            with tarfile.open(p, "r:*") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        members[os.path.basename(m.name)] = tar.extractfile(m).read()
        except (tarfile.TarError, OSError) as e:
            raise NemoFormatError(f"{p} is not a .nemo archive ({type(e).__name__}: {e})") from None
    for name in (CONFIG, WEIGHTS):
        if name not in members:
            raise NemoFormatError(f"{p} has no {name}: not a NeMo model archive")
    config = _parse_config(members.pop(CONFIG).decode("utf-8"))
    if "model" in config and "encoder" not in config:  # a training config wrapping the model section
        config = config["model"]
    try:
        state = torch.load(io.BytesIO(members.pop(WEIGHTS)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure means the same: not readable weights)
        raise NemoFormatError(f"{p}: {WEIGHTS} cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NemoFormatError(f"{p}: {WEIGHTS} is not a state dict of tensors")
    return NemoArchive(config=config, state_dict=state, files=members)


def write_nemo(path: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor],
               files: dict[str, bytes]) -> None:
    """Write a .nemo archive (plain tar, as NeMo 3.0.0 writes them) atomically."""
    import yaml

    from speech_ed.atomic import atomic_write_binary

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"./{name}")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))

    weights = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, weights)

    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w:") as tar:
            add(tar, CONFIG, yaml.safe_dump(config, sort_keys=False).encode("utf-8"))
            add(tar, WEIGHTS, weights.getvalue())
            for name, data in files.items():
                add(tar, name, data)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_binary(path, write)
