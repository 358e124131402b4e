"""The attention encoder-decoder (AED) model, its loss and parameter count.

Shapes: B batch, S samples, T encoder frames, U tokens, N CTC target tokens, De encoder width,
Dd decoder width, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speech_ed.models.conformer import ConformerEncoder
from speech_ed.models.decoder import TransformerDecoder
from speech_ed.models.dims import ModelDims, check_parity_options
from speech_ed.models.frontend import LogMelFrontend, SpecAugment, frontend_options
from speech_ed.models.subsampling import ConvSubsampling


def check_dims(dims: ModelDims, prefix: str = "ModelDims.") -> None:
    """Raise ValueError naming the ModelDims field (after ``prefix``) when the model cannot be built."""
    checks = [
        ("vocab_size", dims.vocab_size > 0, "must be > 0 (set it from the tokenizer before building)"),
        ("subsampling_factor", dims.subsampling_factor in (4, 8), "must be 4 or 8"),
        ("subsampling", dims.subsampling in ("conv2d", "dw_striding"), "must be 'conv2d' or 'dw_striding'"),
        ("encoder_dim", dims.encoder_dim % dims.num_encoder_heads == 0, "must divide by num_encoder_heads"),
        ("decoder_dim", dims.decoder_dim % dims.num_decoder_heads == 0, "must divide by num_decoder_heads"),
        ("pos_enc", dims.pos_enc in ("abs", "rel"), "must be 'abs' or 'rel'"),
        ("decoder_pos", dims.decoder_pos in ("sinusoidal", "learned"), "must be 'sinusoidal' or 'learned'"),
        ("attention_impl", dims.attention_impl in ("matmul", "sdpa", "auto"), "must be matmul, sdpa or auto"),
        ("conv_kernel_size", dims.conv_kernel_size % 2 == 1, "must be odd"),
        ("dropout", 0.0 <= dims.dropout < 1.0, "must be in [0, 1)"),
        ("subsampling_init_scale", dims.subsampling_init_scale > 0, "must be > 0"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise ValueError(f"{prefix}{name}={getattr(dims, name)!r}: {why}")
    check_parity_options(dims, prefix)


def check_audio(audio: torch.Tensor, audio_lens: torch.Tensor) -> None:
    """Raise ValueError unless audio is (B, S) floating point and audio_lens is (B,) integer."""
    if audio.dim() != 2 or not audio.is_floating_point():
        raise ValueError(f"audio must be a (B, S) float waveform, got {tuple(audio.shape)} {audio.dtype}")
    if audio_lens.shape != audio.shape[:1] or audio_lens.is_floating_point():
        raise ValueError(f"audio_lens must be (B,) = ({audio.shape[0]},) integer samples, got "
                         f"{tuple(audio_lens.shape)} {audio_lens.dtype}")


class AEDModel(nn.Module):
    """Log-mel frontend -> SpecAugment (training only) -> conv subsampling -> Conformer encoder
    -> [Linear De -> Dd when widths differ] -> Transformer decoder; optional CTC head on the encoder."""

    def __init__(self, dims: ModelDims):
        super().__init__()
        check_dims(dims)
        self.dims = dims
        self.frontend = LogMelFrontend(dims.n_mels, dims.sample_rate, **frontend_options(dims))
        self.spec_augment = (
            SpecAugment(dims.freq_masks, dims.freq_mask_width, dims.time_masks, dims.time_mask_ratio)
            if dims.spec_augment else None
        )
        self.subsampling = ConvSubsampling(
            dims.subsampling, dims.subsampling_factor, dims.n_mels, dims.subsampling_channels,
            dims.encoder_dim, dims.subsampling_init_scale,
        )
        self.encoder = ConformerEncoder(dims)
        widths_differ = dims.encoder_dim != dims.decoder_dim
        self.projection = nn.Linear(dims.encoder_dim, dims.decoder_dim) if widths_differ else nn.Identity()
        self.ctc = nn.Linear(dims.encoder_dim, dims.vocab_size) if dims.ctc_head else None
        self.decoder = TransformerDecoder(dims)

    def _encode(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S), (B,) -> encoder output (B, T, De) before the projection, and (B,) int64 frames."""
        check_audio(audio, audio_lens)
        feats, feat_lens = self.frontend(audio, audio_lens)  # always float32
        feats = feats.to(self.subsampling.out.weight.dtype)  # a model cast to bf16 runs in bf16 after here
        if self.training and self.spec_augment is not None:
            feats = self.spec_augment(feats, feat_lens)
        x, lens = self.subsampling(feats, feat_lens)
        return self.encoder(x, lens), lens

    def encode(self, audio: torch.Tensor, audio_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output for decoding.

        Args:
            audio: (B, S) float32 16 kHz waveform, zero padded.
            audio_lens: (B,) int64 valid samples.

        Returns:
            enc (B, T, Dd) after the encoder->decoder projection, enc_lens (B,) int64.
        """
        x, lens = self._encode(audio, audio_lens)
        return self.projection(x), lens

    def encode_with_ctc(self, audio: torch.Tensor, audio_lens: torch.Tensor):
        """Like :meth:`encode`, plus the CTC head's logits (B, T, V) (None without a CTC head)."""
        x, lens = self._encode(audio, audio_lens)
        return self.projection(x), lens, (self.ctc(x) if self.ctc is not None else None)

    def forward(self, audio: torch.Tensor, audio_lens: torch.Tensor, tokens_in: torch.Tensor) -> dict:
        """Teacher-forced forward pass.

        Args:
            audio: (B, S) float32 waveform, zero padded.
            audio_lens: (B,) int64 valid samples.
            tokens_in: (B, U) int64 decoder input (prompt + text), pad id 0 after short rows.

        Returns:
            dict with "logits" (B, U, V), "ctc_logits" (B, T, V) or None, "enc" (B, T, Dd), "enc_lens" (B,).
        """
        check_audio(audio, audio_lens)
        if tokens_in.dim() != 2 or tokens_in.shape[0] != audio.shape[0]:
            raise ValueError(f"tokens_in must be (B, U) with B={audio.shape[0]}, "
                             f"got {tuple(tokens_in.shape)}")
        x, lens = self._encode(audio, audio_lens)
        enc = self.projection(x)
        logits = self.decoder(tokens_in, enc, lens)
        ctc_logits = self.ctc(x) if self.ctc is not None else None
        return {"logits": logits, "ctc_logits": ctc_logits, "enc": enc, "enc_lens": lens}


def compute_loss(
    out: dict,
    targets: torch.Tensor,
    ctc_targets: torch.Tensor | None = None,
    ctc_target_lens: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
    ctc_weight: float = 0.3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint CTC-attention loss, summed over tokens and divided by the batch size.

    loss = (1 - ctc_weight) * CE_sum / B + ctc_weight * CTC_sum / B (CTC in fp32, zero_infinity).

    Args:
        out: output of :meth:`AEDModel.forward`.
        targets: (B, U) int64 next-token targets; -100 marks positions that are not scored.
        ctc_targets: (B, N) int64 text tokens padded with 0 (blank), or None when ctc_weight is 0.
        ctc_target_lens: (B,) int64.
        label_smoothing: for the attention cross-entropy.
        ctc_weight: in [0, 1); > 0 needs a CTC head.

    Returns:
        (scalar loss, {"att": CE per scored token, "ctc": CTC per target token (0.0 when unused)}).
    """
    logits = out["logits"]
    b, u, v = logits.shape
    if targets.shape != (b, u):
        raise ValueError(f"targets must be (B, U) = {(b, u)} like the logits, got {tuple(targets.shape)}")
    scored = (targets != -100).sum().clamp(min=1)
    att_sum = F.cross_entropy(
        logits.float().reshape(-1, v), targets.reshape(-1), ignore_index=-100,
        label_smoothing=label_smoothing, reduction="sum",
    )
    loss = (1.0 - ctc_weight) * att_sum / b
    parts = {"att": float(att_sum.detach() / scored), "ctc": 0.0}
    if ctc_weight > 0:
        if out.get("ctc_logits") is None:
            raise ValueError("ctc_weight > 0 but the model has no CTC head (ModelDims.ctc_head=False)")
        if ctc_targets is None or ctc_target_lens is None:
            raise ValueError("ctc_weight > 0 needs ctc_targets and ctc_target_lens")
        log_probs = F.log_softmax(out["ctc_logits"].float(), dim=-1).transpose(0, 1)  # (T, B, V)
        ctc_sum = F.ctc_loss(
            log_probs, ctc_targets, out["enc_lens"], ctc_target_lens, blank=0, reduction="sum",
            zero_infinity=True,
        )
        loss = loss + ctc_weight * ctc_sum / b
        parts["ctc"] = float(ctc_sum.detach() / ctc_target_lens.sum().clamp(min=1))
    return loss, parts


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (shared tensors counted once); works on the meta device."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())
