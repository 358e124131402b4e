"""eval.* -> DecodeOptions, and the one decode path: evaluate, transcribe and bench-rtfx all go through it."""

import argparse
import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from speech_ed.config import ConfigError, EvalConfig, load_config
from speech_ed.evaluation import decoding as eval_decoding
from speech_ed.evaluation.decoding import decode_audio, decode_options
from speech_ed.models import AEDModel, DecodeOptions, decode


def test_auto_mode_is_joint_with_a_ctc_head_else_attention():
    assert decode_options(EvalConfig(), has_ctc=True).mode == eval_decoding.DEFAULT_JOINT["mode"]
    assert decode_options(EvalConfig(), has_ctc=False).mode == "attention"
    opts = decode_options(dataclasses.replace(EvalConfig(), mode="joint", beam_size=4, ctc_weight=0.5,
                                              max_repeats=3), has_ctc=True)
    assert (opts.mode, opts.beam_size, opts.ctc_weight, opts.max_repeats) == ("joint", 4, 0.5, 3)
    with pytest.raises(ValueError, match="CTC head"):
        decode_options(dataclasses.replace(EvalConfig(), mode="joint"), has_ctc=False)


@pytest.mark.parametrize("override,field", [("eval.mode=greedy", "eval.mode"), ("eval.ctc_weight=1.0", "eval.ctc_weight"),
                                            ("eval.penalty_style=x", "eval.penalty_style"),
                                            ("eval.max_repeats=-1", "eval.max_repeats")])
def test_bad_eval_settings_fail_before_any_data(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config([], [override])


def test_joint_without_ctc_head_is_a_config_error():
    with pytest.raises(ConfigError, match="eval.mode"):
        load_config([], ["model.ctc_head=false", "loss.ctc_weight=0", "eval.mode=joint"])
    assert load_config([], ["model.ctc_head=false", "loss.ctc_weight=0"]).eval.mode == "auto"  # attention then


@pytest.fixture(scope="module")
def tiny_model():
    from speech_ed.config import load_model_preset

    torch.manual_seed(0)
    return AEDModel(dataclasses.replace(load_model_preset("tiny"), vocab_size=60)).eval()


@pytest.mark.parametrize("mode", ["attention", "joint", "ctc"])
def test_decode_audio_is_encode_then_decode(tiny_model, mode):
    audio = torch.randn(3, 16000) * 0.1
    lens = torch.tensor([16000, 12000, 8000])
    prompt = torch.ones(3, 2, dtype=torch.long)
    options = DecodeOptions(mode=mode, beam_size=2)
    out = decode_audio(tiny_model, audio, lens, prompt, 2, 0, options, timed=True)
    with torch.no_grad():
        enc, enc_lens, ctc = tiny_model.encode_with_ctc(audio, lens)
    assert out.hyps == decode(tiny_model, enc, enc_lens, prompt, 2, options, ctc_logits=ctc)
    assert out.ctc_hyps is not None and len(out.ctc_hyps) == 3
    assert out.encoder_seconds > 0 and out.decoder_seconds > 0


def test_evaluate_transcribe_and_bench_rtfx_share_the_decode_path(tmp_path, small_cuts, tokenizer, monkeypatch):
    """Each of the three callers reaches speech_ed.evaluation.decoding.decode_audio -> models.decoding.decode."""
    from speech_ed.commands.bench_rtfx import add_arguments, settings_from_args
    from speech_ed.evaluation import rtfx
    from speech_ed.evaluation.evaluate import transcribe_cuts
    from speech_ed.evaluation.transcribe import transcribe_files

    calls = []
    real = eval_decoding.decode

    def spy(model, enc, enc_lens, prompt, eos_id, options, **kw):
        calls.append(options)
        return real(model, enc, enc_lens, prompt, eos_id, options, **kw)

    monkeypatch.setattr(eval_decoding, "decode", spy)
    torch.manual_seed(0)
    from speech_ed.config import load_model_preset

    model = AEDModel(dataclasses.replace(load_model_preset("tiny"), vocab_size=tokenizer.vocab_size)).eval()
    joint = DecodeOptions(mode="joint", beam_size=2)
    out = transcribe_cuts(model, tokenizer, small_cuts, batch_size=4, options=joint, dtype=None)
    assert len(out["rows"]) == len(small_cuts) and calls and all(c is joint for c in calls)

    calls.clear()
    sf.write(tmp_path / "a.wav", (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000)
    (result,) = transcribe_files(model, tokenizer, [str(tmp_path / "a.wav")], "es", options=joint)
    assert result[2] is None and calls == [joint]

    calls.clear()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--presets", "tiny", "--num-utterances", "3", "--batch-size", "3"]))
    utts = rtfx.load_utterances(settings)
    r = rtfx.run_pass(model, rtfx.make_batches(utts, 3), settings, True, 100)
    assert r["output_tokens"] == sum(u.num_tokens for u in utts)
    assert len(calls) == 1 and calls[0].mode == "attention" and calls[0].compact
