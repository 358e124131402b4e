"""Our model on imported NeMo Canary checkpoints reproduces NeMo's own outputs (docs/NEMO.md).

The committed fixtures (tests/fixtures/nemo/, written by scripts/nemo_parity.py with nemo-toolkit 3.0.0) hold
two shapes: ``tiny_canary`` (canary prompt, aggregate tokenizer, relative positions, dw_striding 8x,
BatchNorm, xscaling, fitted so greedy decoding stops at end-of-text) and ``tiny_canary2`` (canary2 prompt,
unified tokenizer, absolute positions, striding 4x, LayerNorm, no xscaling, 48 -> 96 projection, learned
decoder positions, features padded to 16; random weights, so greedy runs to the position cap). The slow test
builds a larger model with NeMo itself when a NeMo venv exists, and checks NeMo restores our export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from speech_ed.nemo import export_nemo, load_nemo
from speech_ed.nemo.parity import compare

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nemo"
SHAPES = ["tiny_canary", "tiny_canary2"]
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


def _reference(shape: str) -> dict:
    return torch.load(FIXTURES / shape / "reference.pt", weights_only=True)


@pytest.fixture(scope="module", params=SHAPES)
def fixture(request):
    imported = load_nemo(FIXTURES / request.param / "model.nemo")
    return request.param, imported, _reference(request.param)


def test_outputs_within_tolerance_and_transcripts_identical(fixture):
    shape, imported, ref = fixture
    report = compare(imported.model, imported.tokenizer, ref, FIXTURES / shape / "audio")
    assert report.lengths_equal and report.prompt_equal
    assert report.features < TOL and report.encoder < TOL, (report.features, report.encoder)
    assert report.logits < TOL and report.log_probs < TOL, (report.logits, report.log_probs)
    for ours, theirs, ids_equal in report.transcripts:
        assert ids_equal and ours == theirs, (ours, theirs)


def test_fixture_shapes_differ_in_every_mapped_option():
    a, b = (load_nemo(FIXTURES / s / "model.nemo").dims for s in SHAPES)
    for field in ("pos_enc", "subsampling", "subsampling_factor", "conv_norm", "xscaling", "decoder_pos", "n_mels"):
        assert getattr(a, field) != getattr(b, field), field
    assert (a.encoder_dim == a.decoder_dim) and (b.encoder_dim != b.decoder_dim)  # Identity vs projection
    fitted = _reference("tiny_canary")["greedy"]
    assert fitted[0]["text"].strip().startswith("The quick brown fox")  # stops at end-of-text
    capped = _reference("tiny_canary2")["greedy"]
    assert all(len(g["ids"]) == b.max_decoder_positions - len(_reference("tiny_canary2")["prompt"]) for g in capped)


def test_a_wrong_option_breaks_parity(fixture):
    """The check can fail: even the subtlest option (biased instead of NeMo's unbiased feature std, a factor
    sqrt(n / (n - 1)) on ~300 frames) moves features and encoder output past the tolerance."""
    import dataclasses

    from speech_ed.models import AEDModel

    shape, imported, ref = fixture
    dims = dataclasses.replace(imported.dims, feature_norm="per_feature")
    wrong = AEDModel(dims)
    wrong.load_state_dict(imported.model.state_dict())
    report = compare(wrong, imported.tokenizer, ref, FIXTURES / shape / "audio")
    assert report.features > 10 * TOL and report.encoder > TOL, report


def test_batch_of_one_gives_the_batched_outputs(fixture):
    shape, imported, ref = fixture
    from speech_ed.nemo.parity import read_audio_batch

    audio, lens = read_audio_batch([FIXTURES / shape / "audio" / ref["files"][1]])
    with torch.no_grad():
        enc, enc_lens = imported.model.encode(audio, lens)
    n = int(enc_lens[0])
    assert (enc[0, :n] - ref["enc"][1, :n]).abs().max() < TOL


def test_parity_table_command(capsys):
    """``python -m speech_ed.nemo.parity`` (docs/NEMO.md) prints one row per fixture and exits 0 within 1e-4."""
    from speech_ed.nemo.parity import main

    assert main([str(FIXTURES / s) for s in SHAPES]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny_canary")]
    assert len(rows) == 2 and rows[0].endswith("| 3/3 |") and rows[1].endswith("| 2/2 |")


def _nemo_python() -> str | None:
    """A Python with nemo-toolkit (``SPEECH_ED_NEMO_PYTHON`` or /work/nemo_venv), or None."""
    for cand in (os.environ.get("SPEECH_ED_NEMO_PYTHON"), "/work/nemo_venv/bin/python"):
        if cand and Path(cand).is_file():
            ok = subprocess.run([cand, "-c", "import nemo.collections.asr"], check=False, capture_output=True,
                                timeout=300)
            if ok.returncode == 0:
                return cand
    return None


@pytest.mark.bench
def test_with_nemo_installed_larger_model_and_export(tmp_path):
    """Build small_canary2 (canary2 prompt, aggregate 2176-token tokenizer, 4 x 256 encoder) with NeMo, check
    parity; export the tiny fixture back to .nemo and check NeMo restores it with the same outputs."""
    python = _nemo_python()
    if python is None:
        pytest.skip("no Python with nemo-toolkit (set SPEECH_ED_NEMO_PYTHON)")
    script = str(REPO / "scripts" / "nemo_parity.py")
    subprocess.run([python, script, "build", "--shapes", "small_canary2", "--out", str(tmp_path)], check=True,
                   cwd=REPO, timeout=3600, stdout=subprocess.DEVNULL)
    imported = load_nemo(tmp_path / "small_canary2" / "model.nemo")
    report = compare(imported.model, imported.tokenizer, torch.load(tmp_path / "small_canary2" / "reference.pt",
                     weights_only=True), tmp_path / "small_canary2" / "audio")
    print(f"small_canary2: {report}")  # the figures docs/NEMO.md quotes (pytest -s)
    assert report.worst() < TOL and report.transcripts_equal and report.prompt_equal, report
    tiny = load_nemo(FIXTURES / "tiny_canary" / "model.nemo")
    exported = export_nemo(tiny.model, tiny.dims, tiny.extra, tmp_path / "exported.nemo")
    audio = tmp_path / "audio"
    shutil.copytree(FIXTURES / "tiny_canary" / "audio", audio)
    subprocess.run([python, script, "reference", "--nemo", str(exported), "--shape", "tiny_canary", "--audio",
                    str(audio), "--out", str(tmp_path / "exported.pt")], check=True, cwd=REPO, timeout=1800,
                   stdout=subprocess.DEVNULL)
    report = compare(tiny.model, tiny.tokenizer, torch.load(tmp_path / "exported.pt", weights_only=True), audio)
    print(f"export of tiny_canary restored by NeMo: {report}")
    assert report.worst() < TOL and report.transcripts_equal, report
    rtfx = tmp_path / "rtfx"  # the benchmark script of docs/NEMO.md, on its smallest setting
    subprocess.run([python, str(REPO / "scripts" / "nemo_rtfx.py"), "--shapes", "tiny_canary", "--per-language", "1",
                    "--repeats", "1", "--out", str(rtfx)], check=True, cwd=REPO, timeout=3600,
                   stdout=subprocess.DEVNULL)
    rows = json.loads((rtfx / "rtfx.json").read_text())["rows"]
    assert [r["decoding"] for r in rows] == ["greedy", "beam 4"] and all(r["ours_rtfx"] > 0 for r in rows)
