"""Model dimensions: the one dataclass every model in speech_ed is built from.

Shape legend used across ``speech_ed.models``: B batch, S audio samples, T frames, F mel features,
U tokens, D model width, V vocabulary.
"""

from dataclasses import dataclass

# Values the string options below accept (checked by check_parity_options before any model or data exists).
CHOICES = {
    "mel_scale": ("htk", "slaney"),
    "mel_norm": ("none", "slaney"),
    "log_guard_type": ("add", "clamp"),
    "feature_norm": ("per_feature", "per_feature_unbiased", "none"),
    "conv_norm": ("layer", "batch"),
    "decoder_pos_scale": ("one", "inv_sqrt_dim"),
}


@dataclass
class ModelDims:
    """Everything needed to build an AED model; stored in every checkpoint."""

    vocab_size: int = 0
    """Output vocabulary; 0 means 'take it from the tokenizer' (set before the model is built)."""
    sample_rate: int = 16000
    n_mels: int = 80
    """Log-mel bins computed inside the model (25 ms window, 10 ms hop)."""
    subsampling_factor: int = 8
    """Time reduction of the convolutional subsampler (4 or 8)."""
    subsampling_channels: int = 64
    """Channels of the subsampler's convolutions (64 is 'thin': cheap on CPU; Canary uses 256)."""
    subsampling_init_scale: float = 4.0
    """Multiplier on the initial weight and bias of the subsampler's output Linear. With PyTorch's default
    init the subsampled frames (x sqrt(D)) have about half the positional encoding's std, and the small model
    stayed on the CTC blank plateau for some seeds; 4 (acoustics about twice the positions) left it within ~350
    steps for every seed measured (docs/BENCHMARKS.md, section 1). 1 keeps the default init."""
    subsampling: str = "conv2d"
    """'conv2d' (plain strided 3x3 convs) or 'dw_striding' (FastConformer depthwise-separable)."""
    encoder_dim: int = 192
    num_encoder_layers: int = 6
    num_encoder_heads: int = 4
    encoder_ff_mult: int = 4
    conv_kernel_size: int = 15
    pos_enc: str = "abs"
    """Encoder positions: 'abs' (sinusoidal added after subsampling) or 'rel' (relative-position attention)."""
    decoder_dim: int = 192
    num_decoder_layers: int = 2
    num_decoder_heads: int = 4
    decoder_ff_mult: int = 4
    max_decoder_positions: int = 512
    decoder_pos: str = "sinusoidal"
    """Decoder positions: 'sinusoidal' or 'learned'."""
    tie_embeddings: bool = False
    dropout: float = 0.0
    """0 by default: on CPU the random masks cost about a fifth of the step (see calibration notes)."""
    ctc_head: bool = True
    """Auxiliary CTC projection on the encoder output (blank = pad id 0)."""
    spec_augment: bool = True
    freq_masks: int = 2
    freq_mask_width: int = 27
    time_masks: int = 5
    time_mask_ratio: float = 0.05
    attention_impl: str = "auto"
    """'matmul' (plain softmax(QK^T)V: fastest to train on CPU), 'sdpa' (fused kernel) or 'auto' (SDPA on
    CUDA, matmul elsewhere)."""

    # Options that reproduce other implementations exactly (NeMo's Canary: docs/NEMO.md). The defaults are
    # this project's own choices; speech_ed.nemo sets the NeMo values when it imports a .nemo checkpoint.
    n_fft: int = 512
    window_periodic: bool = True
    """Hann window of the STFT: periodic (torch's default) or symmetric (False: NeMo's preprocessor)."""
    preemphasis: float = 0.0
    """x[t] - a x[t-1] before the STFT, samples past each utterance zeroed (NeMo: 0.97); 0 = off."""
    dither: float = 0.0
    """Gaussian noise of this std added to the waveform in training only (NeMo: 1e-5); 0 = off."""
    mel_scale: str = "htk"
    """Mel filter centres: 'htk' (2595 log10(1 + f/700)) or 'slaney' (librosa's default, NeMo)."""
    mel_norm: str = "none"
    """'none' (peak 1 per filter) or 'slaney' (area-normalised filters: librosa norm='slaney', NeMo)."""
    log_guard: float = 2.0**-24
    log_guard_type: str = "add"
    """log(mel + guard) ('add') or log(max(mel, guard)) ('clamp')."""
    feature_norm: str = "per_feature"
    """Per utterance and mel bin over the valid frames: 'per_feature' ((x - mean) / sqrt(var + 1e-5), biased
    variance), 'per_feature_unbiased' ((x - mean) / (std + 1e-5), unbiased std: NeMo) or 'none'."""
    drop_last_frame: bool = False
    """Valid frames S // hop instead of S // hop + 1 (NeMo counts one frame fewer; the STFT's last frame is
    then padding)."""
    xscaling: bool = True
    """Multiply the subsampled frames by sqrt(D) before the encoder (NeMo's ``xscaling``)."""
    conv_norm: str = "layer"
    """Norm after the Conformer depthwise conv: 'layer' (LayerNorm) or 'batch' (BatchNorm1d, FastConformer)."""
    decoder_embed_scale: bool = True
    """Multiply decoder token embeddings by sqrt(D) (False: NeMo)."""
    decoder_pos_scale: str = "one"
    """Sinusoidal decoder positions as they are ('one') or divided by sqrt(D) ('inv_sqrt_dim': NeMo)."""
    decoder_embed_norm: bool = False
    """LayerNorm over token + position embeddings before the first decoder layer (NeMo)."""
    output_bias: bool = False
    """Bias on the decoder's output projection (NeMo's TokenClassifier has one)."""


def check_parity_options(dims: ModelDims, prefix: str = "ModelDims.") -> None:
    """Raise ValueError naming the field when one of the options above has an impossible value."""
    for name, allowed in CHOICES.items():
        if getattr(dims, name) not in allowed:
            raise ValueError(f"{prefix}{name}={getattr(dims, name)!r}: must be one of {allowed}")
    window = int(0.025 * dims.sample_rate)
    if dims.n_fft < window:
        raise ValueError(f"{prefix}n_fft={dims.n_fft}: must be >= the 25 ms window ({window} samples)")
    if not 0.0 <= dims.preemphasis < 1.0 or dims.dither < 0.0 or dims.log_guard <= 0.0:
        raise ValueError(f"{prefix}preemphasis must be in [0, 1), dither >= 0 and log_guard > 0 "
                         f"(got {dims.preemphasis}, {dims.dither}, {dims.log_guard})")
