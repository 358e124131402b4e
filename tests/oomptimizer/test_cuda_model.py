"""The simulate probe's CUDA model, checked against bytes counted by hand.

Shapes of the ``small`` preset's encoder attention: width D = 192, H = 4 heads of Dh = 48, no dropout; a 20 s
utterance gives T = 251 frames (320000 samples -> 2001 10-ms frames -> 1001 -> 501 -> 251 after three
stride-2 convolutions). Every storage is rounded up to 512 bytes, as the CUDA caching allocator does.
"""

import contextlib
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from speech_ed.config import load_model_preset
from speech_ed.oomptimizer.cuda_model import (
    CudaSemantics,
    GpuModel,
    choose_sdpa_backend,
    kernel_workspace_bytes,
)
from speech_ed.oomptimizer.memory import StorageTracker
from speech_ed.oomptimizer.simulate import SimulateProbe
from speech_ed.oomptimizer.step import StepSettings

B, T, H, DH = 8, 251, 4, 48
D = H * DH


def r512(n: int) -> int:
    return -(-n // 512) * 512


def test_backend_choice_follows_torch_rules():
    with FakeTensorMode():
        q = torch.empty(2, 4, 100, 64, dtype=torch.bfloat16)
        mask = torch.ones(2, 1, 1, 100, dtype=torch.bool)
        assert choose_sdpa_backend(q, q, q, None, 0.1, False) == "flash"
        assert choose_sdpa_backend(q, q, q, mask, 0.1, False) == "efficient"  # flash takes no mask
        assert choose_sdpa_backend(q.float(), q.float(), q.float(), None, 0.0, False) == "efficient"
        odd = torch.empty(2, 4, 100, 36, dtype=torch.bfloat16)[..., :35]  # head width 35, not a multiple of 8
        assert choose_sdpa_backend(odd, odd, odd, mask, 0.0, False) == "math"
        assert choose_sdpa_backend(q, q, q, None, 0.0, False, capability=(7, 5)) == "math"  # no bf16 kernels


def _leaves():
    """q, k, v as the model makes them: (B, T, D) projections viewed as (B, H, T, Dh); a padding mask."""
    xs = [torch.empty(B, T, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    q, k, v = (x.view(B, T, H, DH).transpose(1, 2) for x in xs)
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool)
    grad = torch.empty(B, T, H, DH, dtype=torch.bfloat16).transpose(1, 2)  # the output's layout
    return q, k, v, mask, grad


def test_fused_attention_keeps_no_scores_hand_count():
    """Forward keeps the output, an fp32 log-sum-exp and a padded bias of the mask's own shape; backward adds
    dQ, dK, dV and the kernel's fp32 dQ accumulator. Nothing is T x T."""
    out_bytes = B * T * H * DH * 2  # 771,072: bf16 output, and each of dQ, dK, dV
    bias = B * 1 * 1 * 256 * 2  # where(mask, 0, -inf) in bf16, 251 columns padded to 256
    lse = B * H * 256 * 4  # fp32, queries rounded up to 32
    seeds = 2 * 512  # philox seed and offset (0-dim int64 each; CUDA keeps them on the host)
    forward = r512(bias) + r512(out_bytes) + r512(lse) + seeds
    workspace = B * H * (4 * 1 * (4 + 64 * 64)) * 4  # 4 query tiles x 1 column tile of 64 x 64 floats + lock
    expected_peak = forward + 3 * r512(out_bytes) + r512(workspace)
    assert expected_peak == 5_221_376
    with FakeTensorMode():
        q, k, v, mask, grad = _leaves()
        tracker = StorageTracker(block_bytes=512, fake=True, workspace=kernel_workspace_bytes)
        semantics = CudaSemantics()
        with tracker, semantics, torch.autocast("cpu", dtype=torch.bfloat16):
            out = F.scaled_dot_product_attention(q, k, v, mask)
            after_forward = tracker.live
            out.backward(grad)
    assert semantics.sdpa_backends == {"efficient": 1}
    assert after_forward == forward
    assert tracker.peak == expected_peak
    assert tracker.workspace_peak == workspace


def test_relative_position_bias_is_kept_once_in_bf16_hand_count():
    """A (B, H, T, T) bias that needs a gradient (relative positions) is kept once, padded to 256 columns."""
    with FakeTensorMode():
        q, k, v, _, _ = _leaves()
        bias = torch.empty(B, H, T, T, dtype=torch.bfloat16, requires_grad=True)
        tracker = StorageTracker(block_bytes=512, fake=True)
        with tracker, CudaSemantics(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = F.scaled_dot_product_attention(q, k, v, bias)
            kept = tracker.live
        assert out.shape == (B, H, T, DH)
    assert kept == r512(B * H * T * 256 * 2) + r512(B * T * H * DH * 2) + r512(B * H * 256 * 4) + 2 * 512


def test_cuda_autocast_layer_norm_and_dropout():
    with FakeTensorMode():
        x = torch.empty(4, 10, 8)
        ln = torch.nn.LayerNorm(8)
        with CudaSemantics(), torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.nn.functional.linear(x, torch.nn.Parameter(torch.empty(8, 8)))
            assert h.dtype == torch.bfloat16
            assert ln(h).dtype == torch.float32  # CUDA autocast runs layer_norm in fp32; CPU autocast in bf16
            assert torch.softmax(h, -1).dtype == torch.float32
            tracker = StorageTracker(fake=True)
            with tracker:
                y = F.dropout(h, 0.1, training=True)
            # the bf16 output and a bool mask, no bf16 noise tensor
            assert y.dtype == torch.bfloat16 and tracker.live == 4 * 10 * 8 * 2 + 4 * 10 * 8


@pytest.mark.slow
def test_small_preset_has_no_quadratic_term_with_fused_attention():
    """Hand-computed bound: at a fixed batch and token count, a step whose attention keeps (B, H, T, T) scores
    has a second difference over durations d, 2d, 3d of at least 2 x B x layers x H x T_d^2 x 2 bytes (the
    softmax alone, even in bf16): the math path (forced; without dropout the CPU would pick its own flash
    kernel) must show it, the fused kernels must stay under 5 % of it."""
    dims = replace(load_model_preset("small"), vocab_size=64)
    b, tokens, seconds = 4, 40, 8.0
    t_d = 101  # frames of 8 s after the 8x subsampler: 801 -> 401 -> 201 -> 101
    bound = 2 * b * dims.num_encoder_layers * dims.num_encoder_heads * t_d**2 * 2
    assert bound == 3_917_184
    second_difference = {}
    for fused in (True, False):
        probe = SimulateProbe(dims, StepSettings(), 1 << 40, gpu_like=True,
                              gpu_model=GpuModel(fused_attention=fused, allocator=False))
        with contextlib.nullcontext() if fused else sdpa_kernel(SDPBackend.MATH):
            p1, p2, p3 = (probe.peak_bytes(b, k * seconds, tokens) for k in (1, 2, 3))
        second_difference[fused] = p3 - 2 * p2 + p1
    assert second_difference[False] >= bound
    assert abs(second_difference[True]) < 0.05 * bound, second_difference


@pytest.mark.parametrize("dh,expect", [(64, 64), (128, 128)])
def test_efficient_backward_workspace_tiles(dh, expect):
    with FakeTensorMode():
        q = torch.empty(2, 3, 130, dh, dtype=torch.bfloat16)
        args = (q, q, q, q, None, q, None, None, None, 0.0, [True, True, True, False])
        got = kernel_workspace_bytes(torch.ops.aten._scaled_dot_product_efficient_attention_backward.default,
                                     args)
    tiles = -(-130 // expect)  # query tiles; one column tile covers the head width
    assert got == 2 * 3 * (tiles * (4 + expect * expect)) * 4
