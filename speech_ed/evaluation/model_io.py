"""Load a model file for inference: our ``model.pt`` (dims + weights + tokenizer) or a NeMo Canary ``.nemo``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from speech_ed.atomic import atomic_write_binary, atomic_write_text
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.models.checkpoint import load_model_file
from speech_ed.nemo.archive import is_nemo_path


def load_model(path: str | Path, device: str = "cpu"):
    """Return ``(model, dims, extra)`` from a ``model.pt`` or a ``.nemo`` archive (converted in memory by
    :mod:`speech_ed.nemo`, which imports no NeMo code), so every command that takes a model file takes both.

    Raises:
        ValueError: not a model file; for a .nemo, ``speech_ed.nemo.NemoFormatError`` naming what cannot be
            mapped.
    """
    if is_nemo_path(path):
        from speech_ed.nemo import load_nemo

        imported = load_nemo(path)
        return imported.model.to(device), imported.dims, imported.extra
    return load_model_file(path, map_location=device)


def load_for_inference(path: str | Path, device: str = "cpu"):
    """Return ``(model, tokenizer)`` from a model file written at the end of training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (it is written at the end of `speech-ed train`)")
    model, dims, extra = load_model(path, device)
    if "tokenizer_model" not in extra:
        raise ValueError(f"{path} carries no tokenizer; re-export it with `speech-ed train`")
    # The tokenizer reads both files when it is built, so the folder is removed right after.
    with tempfile.TemporaryDirectory(prefix="speech_ed_tok_") as tmp:
        tmp = Path(tmp)
        atomic_write_binary(tmp / "tokenizer.model", lambda f: f.write(extra["tokenizer_model"]))
        atomic_write_text(tmp / "tokenizer.json", json.dumps(extra.get("tokenizer_meta", {})))
        tokenizer = Tokenizer.load(tmp / "tokenizer.model")
    return model.to(device), tokenizer
