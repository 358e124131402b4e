"""Self-contained model files: dimensions, weights and opaque extras (the tokenizer) in one ``torch.save``.

``speech-ed transcribe --ckpt model.pt`` needs nothing else. Written atomically (temp file, then rename).
``models/`` imports nothing else of the project: a NeMo ``.nemo`` archive is read by
:func:`speech_ed.evaluation.model_io.load_model`, which dispatches on the file and calls this for our own format.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from speech_ed.models.dims import ModelDims

FORMAT_VERSION = 1


def save_model_file(path: str | os.PathLike, model: torch.nn.Module, dims: ModelDims, extra: dict | None = None):
    """Write ``{"dims", "state_dict", "extra", "format_version"}`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format_version": FORMAT_VERSION, "dims": dataclasses.asdict(dims), "state_dict": state,
                "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load_model_file(path: str | os.PathLike, map_location: str = "cpu"):
    """Return ``(model, dims, extra)`` from a file written by :func:`save_model_file` (model in eval mode).

    Raises:
        ValueError: not a model file.
    """
    from speech_ed.models import AEDModel

    try:
        blob = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a speech_ed model file ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or "dims" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not a speech_ed model file (no 'dims'/'state_dict'); "
                         "pass the model.pt exported at the end of training")
    known = {f.name for f in dataclasses.fields(ModelDims)}
    dims = ModelDims(**{k: v for k, v in blob["dims"].items() if k in known})
    model = AEDModel(dims)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, dims, blob.get("extra", {})
