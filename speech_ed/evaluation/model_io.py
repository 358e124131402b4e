"""Load a ``model.pt`` (dims + weights + tokenizer) for inference."""

from __future__ import annotations

import tempfile
from pathlib import Path

from speech_ed.data.tokenizer import Tokenizer
from speech_ed.models.checkpoint import load_model_file


def load_for_inference(path: str | Path, device: str = "cpu"):
    """Return ``(model, tokenizer)`` from a model file written at the end of training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist (it is written at the end of `speech-ed train`)")
    model, dims, extra = load_model_file(path, map_location=device)
    if "tokenizer_model" not in extra:
        raise ValueError(f"{path} carries no tokenizer; re-export it with `speech-ed train`")
    tmp = Path(tempfile.mkdtemp(prefix="speech_ed_tok_"))
    (tmp / "tokenizer.model").write_bytes(extra["tokenizer_model"])
    import json

    (tmp / "tokenizer.json").write_text(json.dumps(extra.get("tokenizer_meta", {})))
    return model.to(device), Tokenizer.load(tmp / "tokenizer.model")
