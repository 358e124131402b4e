"""Every shipped conf/model preset loads and builds; the Canary presets match published parameter counts."""

import dataclasses

import pytest
import torch

from speech_ed.config import list_model_presets, load_model_preset
from speech_ed.models import AEDModel, count_parameters

PUBLISHED = {"canary_1b": 1.0e9, "canary_1b_flash": 883e6, "canary_180m_flash": 182e6}
LARGE = set(PUBLISHED) | {"twin_24x24", "twin_32x4"}


def build(name: str, device: str = "cpu") -> AEDModel:
    dims = load_model_preset(name)
    if dims.vocab_size == 0:  # tiny / small take it from the tokenizer
        dims = dataclasses.replace(dims, vocab_size=512)
    with torch.device(device):
        return AEDModel(dims)


def test_expected_presets_are_shipped():
    assert {"tiny", "small", *LARGE} <= set(list_model_presets())


@pytest.mark.parametrize("name", sorted(set(list_model_presets()) - LARGE))
def test_small_presets_build_and_run(name):
    model = build(name).eval()
    audio = torch.randn(2, 8000)
    out = model(audio, torch.tensor([8000, 5000]), torch.randint(3, 512, (2, 4)))
    assert out["logits"].shape == (2, 4, 512)


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_presets_build_on_meta(name):
    model = build(name, "meta")
    assert count_parameters(model) > 50e6
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name,published", sorted(PUBLISHED.items()))
def test_canary_parameter_counts_within_5_percent(name, published):
    n = count_parameters(build(name, "meta"))
    assert abs(n / published - 1) <= 0.05, f"{name}: {n:,} parameters vs published {published:,.0f}"


def test_small_is_the_calibration_model():
    """~6.8 M parameters with V=512 (calibration notes: 6.81 M)."""
    n = count_parameters(build("small"))
    assert 6.6e6 < n < 7.0e6


def test_tiny_is_tiny():
    assert count_parameters(build("tiny")) < 1e6


def test_canary_shapes():
    d1, d2, d3 = (load_model_preset(n) for n in ("canary_1b", "canary_1b_flash", "canary_180m_flash"))
    assert (d1.num_encoder_layers, d1.num_decoder_layers, d1.encoder_dim) == (24, 24, 1024)
    assert (d2.num_encoder_layers, d2.num_decoder_layers, d2.encoder_dim) == (32, 4, 1024)
    assert (d3.num_encoder_layers, d3.num_decoder_layers) == (17, 4)
    assert (d3.encoder_dim, d3.decoder_dim) == (512, 1024)
    for d in (d1, d2, d3):
        assert (d.subsampling, d.subsampling_channels) == ("dw_striding", 256)
        assert (d.pos_enc, d.conv_kernel_size) == ("rel", 9)
    model = build("canary_180m_flash", "meta")
    assert isinstance(model.projection, torch.nn.Linear) and model.projection.weight.shape == (1024, 512)
    assert isinstance(build("canary_1b_flash", "meta").projection, torch.nn.Identity)


def test_twins_differ_only_in_depth():
    a, b = load_model_preset("twin_24x24"), load_model_preset("twin_32x4")
    assert (a.num_encoder_layers, a.num_decoder_layers) == (24, 24)
    assert (b.num_encoder_layers, b.num_decoder_layers) == (32, 4)
    strip = {"num_encoder_layers": 0, "num_decoder_layers": 0}
    assert dataclasses.replace(a, **strip) == dataclasses.replace(b, **strip)
    assert a.encoder_dim == a.decoder_dim == 256 and a.vocab_size == 1024
