"""Importing .nemo checkpoints: refusals that name the key, export round trip, the command, the loaders."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from test_nemo_parity import FIXTURES, TOL, _reference  # same folder (tests/models is no package)

from speech_ed.cli import main as cli
from speech_ed.data.prompt import build_prompt
from speech_ed.data.tokenizer import CanaryTokenizer, Tokenizer
from speech_ed.evaluation.model_io import load_model
from speech_ed.models.dims import ModelDims, check_parity_options
from speech_ed.nemo import NemoFormatError, export_nemo, load_nemo, read_nemo, write_nemo
from speech_ed.nemo.parity import compare

TINY = FIXTURES / "tiny_canary" / "model.nemo"
TINY2 = FIXTURES / "tiny_canary2" / "model.nemo"


@pytest.fixture(scope="module")
def archive():
    return read_nemo(TINY)


def _rewrite(archive, tmp_path, config_edit=None, state_edit=None):
    config, state = copy.deepcopy(archive.config), dict(archive.state_dict)
    if config_edit:
        config_edit(config)
    if state_edit:
        state_edit(state)
    path = tmp_path / "edited.nemo"
    write_nemo(path, config, state, archive.files)
    return path


def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        for p in parents:
            cfg = cfg[p]
        cfg[last] = value
    return edit


@pytest.mark.parametrize("key,value", [
    ("encoder.self_attention_model", "rel_pos_local_attn"),
    ("encoder.att_context_size", [70, 13]),
    ("encoder.conv_norm_type", "group_norm4"),
    ("encoder.subsampling", "vggnet"),
    ("encoder.not_a_nemo_key", 1),
    ("preprocessor.window", "hamming"),
    ("preprocessor.frame_splicing", 3),
    ("transf_encoder.num_layers", 2),
    ("transf_decoder.config_dict.hidden_act", "gelu"),
    ("transf_decoder.config_dict.pre_ln", False),
    ("head.num_layers", 2),
    ("prompt_format", "chat"),
])
def test_unmappable_config_is_refused_naming_the_key(archive, tmp_path, key, value):
    path = _rewrite(archive, tmp_path, config_edit=_set(key, value))
    with pytest.raises(NemoFormatError, match=key.replace(".", r"\.")):
        load_nemo(path)


def test_weights_that_do_not_fit_are_refused_naming_the_tensor(archive, tmp_path):
    extra = "encoder.layers.0.extra_adapter.weight"
    path = _rewrite(archive, tmp_path, state_edit=lambda s: s.update({extra: torch.zeros(3)}))
    with pytest.raises(NemoFormatError, match=extra):
        load_nemo(path)
    gone = "encoder.layers.1.conv.batch_norm.running_var"
    path = _rewrite(archive, tmp_path, state_edit=lambda s: s.pop(gone))
    with pytest.raises(NemoFormatError, match=f"{gone} is missing"):
        load_nemo(path)
    fb = "preprocessor.featurizer.fb"  # filters NeMo made with other settings than the config says
    path = _rewrite(archive, tmp_path, state_edit=lambda s: s.update({fb: s[fb] * 1.01}))
    with pytest.raises(NemoFormatError, match=fb):
        load_nemo(path)


def test_not_an_archive(tmp_path):
    bad = tmp_path / "x.nemo"
    bad.write_bytes(b"not a tar")
    with pytest.raises(NemoFormatError, match="not a .nemo archive"):
        load_nemo(bad)


@pytest.mark.parametrize("source", [TINY, TINY2])
def test_export_round_trip_is_exact(source, tmp_path):
    first = load_nemo(source)
    out = export_nemo(first.model, first.dims, first.extra, tmp_path / "out.nemo")
    again = load_nemo(out)
    assert again.dims == first.dims
    a, b = first.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer.to_meta() == first.tokenizer.to_meta()
    original = read_nemo(source).state_dict
    exported = read_nemo(out).state_dict
    assert original.keys() == exported.keys()  # NeMo's own names and shapes, computed buffers included
    assert all(original[k].shape == exported[k].shape for k in original)


def test_export_refuses_a_model_not_from_nemo():
    from speech_ed.models import AEDModel

    dims = ModelDims(vocab_size=32, num_encoder_layers=1, num_decoder_layers=1, encoder_dim=32, decoder_dim=32)
    with pytest.raises(ValueError, match="only models imported from a .nemo"):
        export_nemo(AEDModel(dims), dims, {}, "unused.nemo")


def test_import_command_then_every_loader(tmp_path, capsys):
    from speech_ed.evaluation.model_io import load_for_inference

    out, tok_dir = tmp_path / "model.pt", tmp_path / "tok"
    assert cli(["import-nemo", str(TINY), "--out", str(out), "--tokenizer-out", str(tok_dir)]) == 0
    printed = capsys.readouterr().out
    assert "aggregate, 272 tokens" in printed or "aggregate, 268 tokens" in printed
    assert "prompt format canary" in printed
    model, tokenizer = load_for_inference(out)  # the model file: same outputs as NeMo's
    assert isinstance(tokenizer, CanaryTokenizer) and tokenizer.languages == ["en", "es"]
    report = compare(model, tokenizer, _reference("tiny_canary"), FIXTURES / "tiny_canary" / "audio")
    assert report.worst() < TOL and report.transcripts_equal
    assert isinstance(Tokenizer.load(tok_dir), CanaryTokenizer)
    model2, dims, _ = load_model(TINY)  # the .nemo itself is accepted wherever a model file is
    assert dims == model.dims and torch.equal(model2.decoder.embed.weight, model.decoder.embed.weight)
    back = tmp_path / "back.nemo"
    assert cli(["import-nemo", str(out), "--out", str(back), "--export"]) == 0
    assert load_nemo(back).dims == dims


def test_import_command_reports_refusal(tmp_path, archive, capsys):
    path = _rewrite(archive, tmp_path, config_edit=_set("encoder.self_attention_model", "rel_pos_local_attn"))
    assert cli(["import-nemo", str(path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "encoder.self_attention_model" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_transcribe_command_takes_a_nemo_file(capsys):
    wav = FIXTURES / "tiny_canary" / "audio" / "utt0_en.wav"
    assert cli(["transcribe", "--ckpt", str(TINY), "--language", "en", str(wav)]) == 0
    assert str(wav) in capsys.readouterr().out


def test_canary_tokenizers_match_nemo_prompts_and_text():
    agg, uni = load_nemo(TINY).tokenizer, load_nemo(TINY2).tokenizer
    assert agg.aggregate and not uni.aggregate and uni.prompt_format == "canary2"
    assert build_prompt(agg, "en", "en", "asr", "yes") == _reference("tiny_canary")["prompt"].tolist()
    assert build_prompt(agg, "en", "es", "translate", False) == [
        agg.sot_id, agg.lang_id("en"), agg.task_id("translate"), agg.lang_id("es"), agg.nopnc_id]
    slots = {"emotion": "<|emo:undefined|>", "itn": "no", "timestamp": "no", "diarize": "no"}
    prompt = build_prompt(uni, "es", "es", "transcribe", "yes", **slots)
    assert prompt == _reference("tiny_canary2")["prompt"].tolist()
    assert uni.token_to_piece(prompt[0]) == "\u2581"  # NeMo's unified prompt starts with a word boundary
    text = "El perro de San Roque"
    ids = agg.encode(text, "es")
    assert min(ids) >= agg.offsets["es"] and agg.decode(ids) == " " + text  # NeMo keeps the leading space
    assert agg.decode(ids + [agg.eos_id]).endswith("<|endoftext|>")  # ...and special tokens, as text
    assert uni.decode(uni.encode(text)) == text


def test_parity_options_default_to_the_project_model():
    d = ModelDims()
    assert (d.window_periodic, d.preemphasis, d.mel_scale, d.mel_norm, d.feature_norm) == (
        True, 0.0, "htk", "none", "per_feature")
    assert (d.xscaling, d.conv_norm, d.decoder_embed_scale, d.decoder_pos_scale, d.decoder_embed_norm,
            d.output_bias, d.drop_last_frame) == (True, "layer", True, "one", False, False, False)
    with pytest.raises(ValueError, match="ModelDims.conv_norm"):
        check_parity_options(dataclasses.replace(d, conv_norm="group"))


def test_static_decoder_step_applies_the_nemo_embedding():
    """The fixed-shape (CUDA-graph) decoder step embeds tokens as the decoder does (no sqrt(D), LayerNorm)."""
    from speech_ed.models import greedy_decode
    from speech_ed.nemo.parity import prompt_from_slots, read_audio_batch

    imported, ref = load_nemo(TINY), _reference("tiny_canary")
    audio, lens = read_audio_batch([FIXTURES / "tiny_canary" / "audio" / f for f in ref["files"]])
    with torch.no_grad():
        enc, enc_lens = imported.model.encode(audio, lens)
    prompt = torch.tensor([prompt_from_slots(imported.tokenizer, ref["prompt_slots"])] * len(lens))
    kwargs = {"max_len_ratio": 64.0}
    dynamic = greedy_decode(imported.model, enc, enc_lens, prompt, imported.tokenizer.eos_id, **kwargs)
    static = greedy_decode(imported.model, enc, enc_lens, prompt, imported.tokenizer.eos_id, static_cache=True,
                           **kwargs)
    assert static == dynamic == [g["ids"] for g in ref["greedy"]]


@pytest.mark.slow
def test_docs_page_commands_run_as_written(tmp_path):
    """docs/NEMO.md's first bash block, verbatim, in a scratch folder that links the checkout's tests and venv."""
    import os
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    block = re.search(r"```bash\n(.*?)```", (repo / "docs" / "NEMO.md").read_text(), re.DOTALL).group(1)
    for name in ("tests", ".venv"):
        (tmp_path / name).symlink_to(repo / name)
    env = {**os.environ, "PATH": f"{repo / '.venv' / 'bin'}:{os.environ['PATH']}", "WANDB_MODE": "offline"}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "prompt format canary" in run.stdout and "| tiny_canary2 |" in run.stdout
    assert (tmp_path / "exp" / "nemo" / "back.nemo").is_file()
