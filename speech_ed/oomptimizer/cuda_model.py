"""What a CUDA training step allocates that a fake-tensor trace on the CPU does not see: the simulate probe's
model of the GPU.

A trace on this CPU build records CPU semantics. Three of them change what a step keeps alive, so for a GPU
target :class:`CudaSemantics` (a torch-function mode, active while the step is traced) makes the public torch
calls behave as they do on CUDA; every replacement calls real aten operators, so autograd saves and frees what
it saves and frees on the GPU:

1. **Attention.** ``F.scaled_dot_product_attention`` on the CPU runs the math path: in fp32 (bf16 inputs are
   upcast), it keeps the (B, H, Tq, Tk) softmax, the dropout noise and the dropped weights for backward. CUDA
   picks a fused kernel by torch's rules (:func:`choose_sdpa_backend`): flash attention without a mask, the
   memory-efficient kernel with one. They keep q, k, v, the output and an fp32 log-sum-exp (B, H, Tq); a mask
   is turned into an additive bias of the mask's own shape (padded to a multiple of 8 columns), so a
   (B, 1, 1, Tk) padding mask stays small and only a bias that is already (B, H, Tq, Tk) (relative positions)
   costs Tq x Tk, once, in bf16. The backward kernels' scratch buffers are :func:`kernel_workspace_bytes`.
2. **Autocast.** CUDA autocast runs layer_norm, group_norm, softmax, log_softmax, cumsum, exp, log, pow, ...
   in fp32; CPU autocast runs them in bf16. So on the GPU the output of a LayerNorm is fp32, and a residual
   stream that passes through one (a Conformer block's final LayerNorm) is fp32 too: twice the bytes of every
   activation saved along it. A handful of matmul-like ops that CUDA autocast casts to bf16 and CPU autocast
   does not (einsum, mv, addmv, addr, chain_matmul, multi_dot) are cast as well.
3. **Dropout.** CUDA's fused dropout keeps a 1-byte bool mask for backward; the CPU keeps a noise tensor of
   the input's dtype (2 or 4 bytes per element). ``F.dropout`` becomes ``aten.native_dropout``, CUDA's path.

Constant allocations: :func:`cublas_workspace_bytes`. What is left out, and why, is in docs/OOMPTIMIZER.md.

Sources: torch's ``sdp_utils.cpp`` (backend choice), ``attention.cpp`` (mask conversion and padding),
``attention.cu`` / ``attention_backward.cu`` / ``mem_eff_attention/kernel_backward.h`` / ``flash_api.cpp``
(kernel allocations), ``autocast_mode.cpp`` (op lists), ``CublasHandlePool.cpp`` (workspace size); torch
2.5-2.11.
Shapes: B batch, H heads, Tq queries, Tk keys, Dh head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten
LOW_PRECISION = (torch.float16, torch.bfloat16)
Capability = tuple[int, int]

# GPU name -> CUDA compute capability (what the kernel choices and the cuBLAS workspace depend on).
GPU_COMPUTE_CAPABILITY: dict[str, Capability] = {
    "a100-40gb": (8, 0),
    "a100-80gb": (8, 0),
    "h100-80gb": (9, 0),
    "h200-141gb": (9, 0),
    "l4-24gb": (8, 9),
    "rtx4090-24gb": (8, 9),
}
DEFAULT_CAPABILITY: Capability = (9, 0)


@dataclass(frozen=True)
class GpuModel:
    """Which terms of the CUDA model the simulate probe applies (all by default; docs/OOMPTIMIZER.md)."""

    fused_attention: bool = True
    """SDPA through the kernel CUDA picks (flash / memory-efficient), not the CPU's math path."""
    cuda_autocast: bool = True
    """CUDA autocast's fp32 ops (layer_norm, softmax, ...) instead of CPU autocast's bf16."""
    cuda_dropout: bool = True
    """Dropout keeps a bool mask (CUDA) instead of a noise tensor of the input's dtype (CPU)."""
    kernel_workspaces: bool = True
    """Scratch buffers of the attention kernels (:func:`kernel_workspace_bytes`)."""
    cublas_workspaces: bool = True
    """cuBLAS workspaces held by the allocator (:func:`cublas_workspace_bytes`)."""
    allocator: bool = True
    """Fit = the caching-allocator replay never reserves past the limit (False: tensors alive <= limit)."""
    keep_cache: bool = True
    """Keep the allocator's cache from trial to trial, as the cuda probe does (False: start each afresh)."""

    @classmethod
    def none(cls) -> "GpuModel":
        """Nothing of it: the trace as the CPU runs it, judged by the tensors alive (session 2's probe)."""
        return cls(**{f.name: False for f in fields(cls)})


# CUDA autocast's "fp32" policy: floating inputs in low precision are cast to fp32 (autocast_mode.cpp).
_FP32_CAST = {
    F.layer_norm, F.group_norm, F.softplus, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.kl_div,
    F.binary_cross_entropy_with_logits, F.nll_loss, F.cosine_similarity,
    torch.exp, torch.Tensor.exp, torch.log, torch.Tensor.log, torch.log1p, torch.Tensor.log1p,
    torch.expm1, torch.Tensor.expm1, torch.log2, torch.Tensor.log2, torch.log10, torch.Tensor.log10,
    torch.pow, torch.Tensor.pow, torch.rsqrt, torch.Tensor.rsqrt, torch.reciprocal, torch.Tensor.reciprocal,
    torch.sinh, torch.cosh, torch.tan, torch.acos, torch.asin, torch.erfinv, torch.logsumexp, torch.cdist,
}
# CUDA autocast's "fp32_set_opt_dtype" policy: the op gets dtype=float32 unless one is given (position of
# the dtype argument when passed positionally).
_FP32_DTYPE = {
    F.softmax: 3, F.log_softmax: 3, torch.softmax: 2, torch.log_softmax: 2, torch.Tensor.softmax: 2,
    torch.Tensor.log_softmax: 2, torch.cumsum: 2, torch.Tensor.cumsum: 2,
}
# Ops CUDA autocast runs in low precision that CPU autocast leaves alone.
_LOWER_CAST = {torch.einsum, torch.mv, torch.Tensor.mv, torch.addmv, torch.addr, torch.chain_matmul,
               torch.linalg.multi_dot}


def _cast(tree, dtype: torch.dtype, only: tuple[torch.dtype, ...]):
    return tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in only else t, tree)


def choose_sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor],
                        dropout_p: float, is_causal: bool,
                        capability: Capability = DEFAULT_CAPABILITY) -> str:
    """The kernel CUDA's ``F.scaled_dot_product_attention`` runs for these inputs (torch's ``sdp_utils.cpp``).

    'flash' needs sm80+, fp16/bf16, no explicit mask, equal head widths <= 256 and, when causal, as many
    queries as keys. 'efficient' needs head widths that are a multiple of the GEMM alignment (8 for fp16/bf16
    on sm80+, 4 for fp32) and aligned storage offsets. Otherwise 'math'. The flags of
    ``torch.backends.cuda.enable_*_sdp`` are honoured. cuDNN attention is not modelled: torch prefers it only
    with cuDNN > 9.15 and an attention dropout that is a multiple of 1/16 (the presets use 0.1), and it does
    not materialise Tq x Tk scores either.

    Args:
        q: (B, H, Tq, Dh); k: (B, H, Tk, Dh); v: (B, H, Tk, Dv), already in the dtype the kernel sees.
        attn_mask: bool or additive, broadcastable to (B, H, Tq, Tk), or None.
        dropout_p, is_causal: as for ``F.scaled_dot_product_attention``.
        capability: CUDA compute capability of the target.
    """
    dims_ok = q.dim() == 4 and k.dim() == 4 and v.dim() == 4 and q.shape[1] == k.shape[1] == v.shape[1]
    if not dims_ok or min(q.shape[2], k.shape[2]) == 0:
        return "math"
    last_strides_ok = all(t.stride(-1) == 1 for t in (q, k, v))
    dh, dv = q.shape[-1], v.shape[-1]
    backends = torch.backends.cuda
    if (backends.flash_sdp_enabled() and capability >= (8, 0) and q.dtype in LOW_PRECISION
            and attn_mask is None and dh == k.shape[-1] == dv and dh <= 256 and last_strides_ok
            and (not is_causal or q.shape[2] == k.shape[2])):
        return "flash"
    half = q.dtype in LOW_PRECISION
    dtypes = (torch.float16, torch.bfloat16, torch.float32) if capability >= (8, 0) else \
        (torch.float16, torch.float32)
    use_tensor_cores = capability >= (8, 0) or (capability >= (7, 0) and half)
    align = 4 if capability >= (8, 0) else 1
    if use_tensor_cores:
        align = max(align, 128 // (16 if half else 32))
    offsets_ok = all(t.storage_offset() % align == 0 for t in (q, k, v))
    if (backends.mem_efficient_sdp_enabled() and capability >= (5, 0) and q.dtype in dtypes
            and dh == k.shape[-1] and dh % align == 0 and dv % align == 0 and last_strides_ok and offsets_ok):
        return "efficient"
    return "math"


def _additive_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The bias the memory-efficient kernel reads (``attention.cpp``: convert_boolean_attn_mask,
    preprocess_mask).

    A bool mask becomes ``where(mask, 0, -inf)`` in q's dtype, in the mask's own (broadcast) shape; a bias
    whose strides are not multiples of 8 elements is copied into a buffer padded to a multiple of 8 columns
    (the kernel reads 16-byte rows); then it is expanded, without copying, to (B, H, Tq, Tk).
    """
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.scalar_tensor(-math.inf, dtype=q.dtype, device=mask.device))
    aligned = all(mask.stride(i) % 8 == 0 for i in range(mask.dim() - 1)) and mask.stride(-1) == 1
    if not aligned:
        cols = mask.shape[-1]
        mask = F.pad(mask, (0, 8 - cols % 8))[..., :cols]
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _cuda_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
               capability: Capability = DEFAULT_CAPABILITY) -> tuple[torch.Tensor, str]:
    if torch.is_autocast_enabled("cpu"):  # SDPA is in autocast's lower-precision list on CUDA and CPU
        q, k, v, attn_mask = _cast((q, k, v, attn_mask), torch.get_autocast_dtype("cpu"), (torch.float32,))
    backend = "math" if enable_gqa else \
        choose_sdpa_backend(q, k, v, attn_mask, dropout_p, is_causal, capability)
    if backend == "flash":
        out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
    elif backend == "efficient":
        bias = None if attn_mask is None else _additive_mask(attn_mask, q, k)
        lse = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        out = aten._scaled_dot_product_efficient_attention(q, k, v, bias, lse, dropout_p, is_causal,
                                                           scale=scale)[0]
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale,
                                             enable_gqa=enable_gqa)
    return out, backend


def cuda_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
              enable_gqa: bool = False, capability: Capability = DEFAULT_CAPABILITY) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as CUDA runs it: the same backend, the same aten operator
    (GQA falls back to the math path here). Shapes as for :func:`choose_sdpa_backend`; returns (B, H, Tq, Dv).
    """
    return _cuda_sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, capability)[0]


class CudaSemantics(TorchFunctionMode):
    """Trace a step with CUDA's attention kernels, autocast policy and dropout (see the module docstring).

    Enter it around the traced step, together with CPU autocast standing in for CUDA autocast.

    Args:
        capability: CUDA compute capability of the target GPU.
        fused_attention, autocast, dropout: apply that part (see :class:`GpuModel`).
    """

    def __init__(self, capability: Capability = DEFAULT_CAPABILITY, fused_attention: bool = True,
                 autocast: bool = True, dropout: bool = True):
        super().__init__()
        self.capability = capability
        self.fused_attention, self.autocast, self.dropout = fused_attention, autocast, dropout
        self.sdpa_backends: dict[str, int] = {}
        """How many attention calls went to each backend (for reports and tests)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.fused_attention:
            out, backend = _cuda_sdpa(*args, capability=self.capability, **kwargs)
            self.sdpa_backends[backend] = self.sdpa_backends.get(backend, 0) + 1
            return out
        if func is F.dropout and self.dropout:
            return _cuda_dropout(*args, **kwargs)
        if self.autocast and torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            if func in _FP32_CAST:
                args, kwargs = _cast((args, kwargs), torch.float32, LOW_PRECISION)
            elif func in _FP32_DTYPE and "dtype" not in kwargs and len(args) <= _FP32_DTYPE[func] \
                    and isinstance(args[0], torch.Tensor) and args[0].dtype in LOW_PRECISION:
                kwargs = {**kwargs, "dtype": torch.float32}
            elif func in _LOWER_CAST:
                args, kwargs = _cast((args, kwargs), low, (torch.float32,))
        return func(*args, **kwargs)


def _cuda_dropout(input, p=0.5, training=True, inplace=False):
    """``F.dropout`` as CUDA runs it in training: ``native_dropout``, whose backward keeps a bool mask."""
    if not training or p == 0.0 or p == 1.0:
        return F.dropout(input, p, training, inplace)
    return aten.native_dropout(input, p, True)[0]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def kernel_workspace_bytes(func, args) -> int:
    """Scratch memory a CUDA attention kernel allocates while it runs, beyond the tensors it returns.

    * memory-efficient backward (``kernel_backward.h``): an fp32 dQ accumulator per (batch, head), in tiles of
      the first kernel the dispatcher accepts (64 x 64 for Dh <= 64, 128 x 128 for Dh <= 128, 128 x 64 above,
      each tile with a 16-byte lock header); above Dh = 128 (dK, dV no longer fit in registers) also fp32 dK
      and dV accumulators (one key split assumed).
    * memory-efficient forward (``attention.cu``): an fp32 output accumulator (B, Tq, H, Dv) when Dv > 128.
    * flash backward (``flash_api.cpp`` mha_bwd): fp32 softmax_d (B, H, Tq rounded to 128) and, when the keys
      span more than one block, fp32 dq_accum (B, Tq rounded to 128, H, Dh rounded to 32).

    The sm80 kernels are the ones that run on sm80-sm90.

    Args:
        func: the aten overload about to be counted; args: its arguments.

    Returns:
        Bytes (0 for any other operator).
    """
    if func is aten._scaled_dot_product_efficient_attention_backward.default:
        q, k, v = args[1], args[2], args[3]
        b, h, m, dh = q.shape
        n, dv = k.shape[2], v.shape[3]
        kmax = max(dh, dv)
        half = q.dtype in LOW_PRECISION
        bi, bj = (64, 64) if kmax <= 64 else (128, 128) if kmax <= 128 else (128, 64)
        if not half:
            bi, bj = 64, 64
        gq = math.ceil(m / bi) * math.ceil(dh / bj) * (4 + bi * bj)  # floats, GradQTempStorage tiles
        output_in_rf = half and kmax <= bi
        gkv = 0 if output_in_rf or not half else _round_up(n, bj) * (_round_up(dh, bi) + _round_up(dv, bi))
        return b * h * _round_up(gq + gkv, 4) * 4
    if func is aten._scaled_dot_product_efficient_attention.default:
        q, v = args[0], args[2]
        b, h, m, _ = q.shape
        dv = v.shape[3]
        return b * m * h * dv * 4 if dv > 128 and q.dtype != torch.float32 else 0
    if func is aten._scaled_dot_product_flash_attention_backward.default:
        q, k = args[1], args[2]
        b, h, m, dh = q.shape
        n = k.shape[2]
        m128 = _round_up(m, 128)
        loop = n > (128 if dh > 64 else 256)
        dq_accum = b * m128 * h * (_round_up(dh, 32) if dh <= 192 else 256) * 4 if loop else 0
        return b * h * m128 * 4 + dq_accum
    return 0


def cublas_workspace_bytes(capability: Capability = DEFAULT_CAPABILITY) -> int:
    """cuBLAS workspaces the caching allocator holds once matmuls have run (``CublasHandlePool.cpp``).

    One per (handle, stream); handles are per thread, and backward runs on autograd's device thread, so two:
    32 MiB each on sm90 (4096 KiB x 8), 8 MiB + 128 KiB elsewhere (cuBLASLt shares it in recent torch).
    """
    per_handle = 4096 * 1024 * 8 if capability == (9, 0) else 4096 * 1024 * 2 + 16 * 1024 * 8
    return 2 * per_handle
