"""load_for_inference: the tokenizer travels inside the model file and nothing is left behind on disk."""

from __future__ import annotations

import tempfile

from speech_ed.evaluation.model_io import load_for_inference
from speech_ed.models.aed import AEDModel
from speech_ed.models.checkpoint import save_model_file
from speech_ed.models.dims import ModelDims


def test_load_for_inference_rebuilds_the_tokenizer_and_leaves_no_temp_folder(tmp_path, tokenizer, monkeypatch):
    dims = ModelDims(n_mels=80, vocab_size=tokenizer.vocab_size, encoder_dim=32, num_encoder_layers=1,
                     num_encoder_heads=2, decoder_dim=32, num_decoder_layers=1, num_decoder_heads=2,
                     subsampling_channels=8)
    extra = {"tokenizer_model": tokenizer.model_path.read_bytes(), "tokenizer_meta": tokenizer.meta}
    save_model_file(tmp_path / "model.pt", AEDModel(dims), dims, extra)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    for _ in range(3):
        model, tok = load_for_inference(tmp_path / "model.pt")
    assert list(scratch.iterdir()) == []
    text = "la casa es grande"
    assert tok.decode(tok.encode(text)) == tokenizer.decode(tokenizer.encode(text)) == text
    assert (tok.sot_id, tok.eos_id, tok.languages) == (tokenizer.sot_id, tokenizer.eos_id, tokenizer.languages)
    assert sum(p.numel() for p in model.parameters()) > 0
