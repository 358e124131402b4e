"""Model dimensions: the one dataclass every model in speech_ed is built from.

Shape legend used across ``speech_ed.models``: B batch, S audio samples, T frames, F mel features,
U tokens, D model width, V vocabulary.
"""

from dataclasses import dataclass


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
