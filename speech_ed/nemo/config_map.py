"""NeMo EncDecMultiTaskModel config -> :class:`~speech_ed.models.dims.ModelDims`, refusing what cannot be mapped.

Every key of the preprocessor, encoder, decoder and head sections is either mapped to a ModelDims field,
checked to hold the one value this model implements, or listed as inert (it only matters for training with
NeMo: dropouts, stochastic depth, attention kernels); any other key, or another value, stops the import with
a :class:`~speech_ed.nemo.archive.NemoFormatError` naming it. Mapped but training-only differences (a
SpecAugment width in frames, shared relative-position biases) become notes the importer prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from speech_ed.models.dims import ModelDims
from speech_ed.nemo.archive import NemoFormatError

MULTITASK = "EncDecMultiTaskModel"
PREPROCESSOR = "AudioToMelSpectrogramPreprocessor"
ENCODER = "ConformerEncoder"


@dataclass
class Mapped:
    """What :func:`dims_from_config` found."""

    dims: ModelDims
    prompt_format: str
    prompt_defaults: dict
    untie_biases: bool = True
    use_bias: bool = True
    token_types: int = 0
    notes: list[str] = field(default_factory=list)


class _Section:
    """One config section; remembers the keys read so unknown ones can be refused."""

    def __init__(self, cfg: dict | None, name: str, inert: tuple[str, ...] = ()):
        self.cfg, self.name, self.inert, self.read = dict(cfg or {}), name, set(inert), {"_target_"}

    def get(self, key: str, default=None):
        """The value of ``key``; ``default`` only when the key is absent (an explicit null stays None)."""
        self.read.add(key)
        return self.cfg.get(key, default)

    def need(self, key: str, ok, default=None, why: str = "not supported"):
        """The value of ``key``, which must satisfy ``ok`` (a predicate, or a tuple of allowed values)."""
        value = self.get(key, default)
        good = value in ok if isinstance(ok, tuple) else ok(value)
        if not good:
            allowed = f"; this importer supports {ok}" if isinstance(ok, tuple) else ""
            raise NemoFormatError(f"{self.name}.{key}={value!r}: {why}{allowed}")
        return value

    def target(self, expected: str) -> None:
        target = str(self.cfg.get("_target_", ""))
        if target and target.rsplit(".", 1)[-1] != expected:
            raise NemoFormatError(f"{self.name}._target_={target!r}: only {expected} can be mapped")

    def finish(self) -> None:
        unknown = sorted(set(self.cfg) - self.read - self.inert)
        if unknown:
            raise NemoFormatError(f"{self.name}.{unknown[0]}: unknown key (this importer maps NeMo 3.0.0's "
                                  f"arguments; {len(unknown)} unknown: {unknown})")


def _preprocessor(cfg: dict, dims: dict, notes: list[str]) -> None:
    s = _Section(cfg, "preprocessor", inert=("use_grads", "rng", "max_duration", "use_torchaudio"))
    s.target(PREPROCESSOR)
    sr = s.need("sample_rate", lambda v: isinstance(v, int) and v > 0, 16000)
    win = s.get("n_window_size") or int(s.get("window_size", 0.02) * sr)
    hop = s.get("n_window_stride") or int(s.get("window_stride", 0.01) * sr)
    if (win, hop) != (int(0.025 * sr), int(0.010 * sr)):
        raise NemoFormatError(f"preprocessor.window_size/window_stride: {win}/{hop} samples; only the 25 ms "
                              "window with a 10 ms hop is implemented")
    s.need("window", ("hann",), "hann")
    s.need("normalize", ("per_feature",), "per_feature")
    n_fft = s.get("n_fft") or 2 ** math.ceil(math.log2(win))
    s.need("log", (True,), True)
    s.need("frame_splicing", (1,), 1)
    s.need("exact_pad", (False,), False)
    s.need("mag_power", lambda v: float(v) == 2.0, 2.0, "only the power spectrum (2.0) is implemented")
    s.need("lowfreq", lambda v: float(v) == 0.0, 0)
    s.need("highfreq", lambda v: v is None or float(v) == sr / 2, None, "filters must reach Nyquist")
    s.need("mel_norm", ("slaney", None), "slaney")
    for deprecated in ("stft_exact_pad", "stft_conv"):
        s.need(deprecated, (False,), False, "deprecated STFT options are not supported")
    guard = s.get("log_zero_guard_value", 2.0**-24)
    guards = {"tiny": 1.1754943508222875e-38, "eps": 1.1920928955078125e-07}  # float32 finfo, as NeMo
    if isinstance(guard, str) and guard not in guards:
        raise NemoFormatError(f"preprocessor.log_zero_guard_value={guard!r}: a number, 'tiny' or 'eps'")
    # pad_to / pad_value only change frames past each utterance, which the subsampler masks (NeMo 3.0.0 too)
    s.get("pad_to")
    s.get("pad_value")
    if s.get("nb_augmentation_prob", 0.0):
        notes.append("preprocessor.nb_augmentation_prob (narrow-band training augmentation) is not reproduced")
    s.get("nb_max_freq")
    dims.update(sample_rate=sr, n_mels=s.need("features", lambda v: isinstance(v, int) and v > 0, 64),
                n_fft=int(n_fft), window_periodic=False, preemphasis=float(s.get("preemph", 0.97) or 0.0),
                dither=float(s.get("dither", 1e-5) or 0.0), mel_scale="slaney",
                mel_norm="slaney" if cfg.get("mel_norm", "slaney") == "slaney" else "none",
                log_guard=float(guards.get(guard, guard)),
                log_guard_type=s.need("log_zero_guard_type", ("add", "clamp"), "add"),
                feature_norm="per_feature_unbiased", drop_last_frame=True)
    s.finish()


def _spec_augment(cfg: dict | None, dims: dict, notes: list[str]) -> None:
    if not cfg:
        dims["spec_augment"] = False
        return
    s = _Section(cfg, "spec_augment", inert=("rng", "mask_value", "use_vectorized_spec_augment",
                                             "use_numba_spec_augment", "rect_masks", "rect_time", "rect_freq"))
    time_width = s.get("time_width", 10)
    dims.update(spec_augment=True, freq_masks=int(s.get("freq_masks", 0)), freq_mask_width=int(s.get("freq_width", 10)),
                time_masks=int(s.get("time_masks", 0)))
    if isinstance(time_width, float) and time_width < 1:
        dims["time_mask_ratio"] = time_width
    else:
        notes.append(f"spec_augment.time_width={time_width} is in frames; ModelDims.time_mask_ratio (a share of "
                     f"the utterance) keeps {ModelDims.time_mask_ratio}")
    if s.get("rect_masks"):
        notes.append("spec_augment.rect_masks (rectangle masks) are not reproduced in training")
    s.finish()


def _encoder(cfg: dict, dims: dict, mapped: Mapped) -> None:
    s = _Section(cfg, "encoder", inert=(
        "dropout_pre_encoder", "dropout_emb", "dropout_att", "stochastic_depth_drop_prob", "stochastic_depth_mode",
        "stochastic_depth_start_layer", "use_pytorch_sdpa", "use_pytorch_sdpa_backends", "sync_max_audio_length",
        "subsampling_conv_chunking_factor", "pos_emb_max_len", "att_context_probs"))
    s.target(ENCODER)
    s.need("feat_in", lambda v: v == dims["n_mels"], None, "must equal preprocessor.features")
    d = s.need("d_model", lambda v: isinstance(v, int) and v > 0)
    kinds = {"dw_striding": "dw_striding", "striding": "conv2d"}
    sub = s.need("subsampling", tuple(kinds), "striding")
    channels = s.get("subsampling_conv_channels", -1)
    ff = s.need("ff_expansion_factor", lambda v: float(v) == int(v) and v > 0, 4, "must be a whole number")
    attention = s.need("self_attention_model", ("rel_pos", "abs_pos"), "rel_pos")
    kernel = s.need("conv_kernel_size", lambda v: isinstance(v, int) and v % 2 == 1, 31, "must be odd")
    s.need("feat_out", lambda v: v in (-1, None, d), -1, "an output projection is not implemented")
    s.need("causal_downsampling", (False,), False)
    s.need("reduction", (None,), None)
    s.get("reduction_position")
    s.need("reduction_factor", (1, None), 1)
    s.need("att_context_size", lambda v: v in (None, [-1, -1]), None, "only full (unlimited) attention is implemented")
    s.need("att_chunk_context_size", (None,), None)
    s.need("att_context_style", ("regular",), "regular")
    s.need("conv_context_size", lambda v: v in (None, [(kernel - 1) // 2] * 2), None, "only a centred conv")
    s.need("conv_context_style", ("regular",), "regular")
    s.need("global_tokens", (0,), 0)
    s.get("global_tokens_spacing")
    s.get("global_attn_separate")
    norm = s.need("conv_norm_type", ("batch_norm", "layer_norm"), "batch_norm")
    mapped.untie_biases = bool(s.get("untie_biases", True))
    mapped.use_bias = bool(s.get("use_bias", True))
    if not mapped.untie_biases and attention == "rel_pos":
        mapped.notes.append("encoder.untie_biases=false: the shared relative-position biases are copied into every "
                            "layer (exact for inference; fine-tuning would untie them)")
    if not mapped.use_bias:
        mapped.notes.append("encoder.use_bias=false: the encoder's Linear/conv biases are set to zero (exact for "
                            "inference; fine-tuning would train them)")
    dims.update(encoder_dim=d, num_encoder_layers=s.need("n_layers", lambda v: isinstance(v, int) and v > 0),
                num_encoder_heads=s.need("n_heads", lambda v: isinstance(v, int) and d % v == 0, 4,
                                         "must divide d_model"),
                encoder_ff_mult=int(ff), conv_kernel_size=kernel, subsampling=kinds[sub],
                subsampling_factor=s.need("subsampling_factor", (4, 8), 4),
                subsampling_channels=d if channels in (-1, None) else int(channels),
                pos_enc="rel" if attention == "rel_pos" else "abs", xscaling=bool(s.get("xscaling", True)),
                conv_norm="batch" if norm == "batch_norm" else "layer", dropout=float(s.get("dropout", 0.1) or 0.0))
    s.finish()


def _decoder(cfg: dict, dims: dict, mapped: Mapped) -> None:
    top = _Section(cfg, "transf_decoder", inert=("model_name", "pretrained", "encoder", "config_dict"))
    top.target("get_nemo_transformer")
    top.need("model_name", (None,), None, "only NeMo's own transformer (model_name null) can be mapped")
    top.need("pretrained", (False,), False)
    top.need("encoder", (None, False), None, "the decoder cannot be an encoder")
    top.need("pre_ln_final_layer_norm", (True,), True, "the decoder ends with a LayerNorm here")
    top.finish()
    s = _Section(cfg.get("config_dict"), "transf_decoder.config_dict", inert=(
        "embedding_dropout", "ffn_dropout", "attn_score_dropout", "attn_layer_dropout", "vocab_size", "mask_future"))
    d = s.need("hidden_size", lambda v: isinstance(v, int) and v > 0)
    inner = s.need("inner_size", lambda v: isinstance(v, int) and v % d == 0, None, "must be a multiple of hidden_size")
    s.need("hidden_act", ("relu",), "relu")
    s.need("pre_ln", (True,), False, "post-LN decoders are not implemented")
    s.need("arch", ("", None), "", "bottleneck decoders are not implemented")
    mapped.token_types = int(s.get("num_token_types", 2) or 0)
    learned = bool(s.get("learn_positional_encodings", False))
    dims.update(decoder_dim=d, decoder_ff_mult=inner // d,
                num_decoder_layers=s.need("num_layers", lambda v: isinstance(v, int) and v > 0),
                num_decoder_heads=s.need("num_attention_heads", lambda v: isinstance(v, int) and d % v == 0, 1,
                                         "must divide hidden_size"),
                max_decoder_positions=int(s.get("max_sequence_length", 512) or 512),
                decoder_pos="learned" if learned else "sinusoidal", decoder_pos_scale="one" if learned else "inv_sqrt_dim",
                decoder_embed_scale=False, decoder_embed_norm=True, output_bias=True, tie_embeddings=True)
    s.finish()


def _head(cfg: dict, dims: dict) -> None:
    s = _Section(cfg, "head", inert=("log_softmax", "dropout", "use_transformer_init", "hidden_size", "num_classes",
                                     "activation"))
    s.target("TokenClassifier")
    s.need("num_layers", (1,), 1, "only a single Linear head (TokenClassifier num_layers 1) is implemented")
    s.finish()


def dims_from_config(cfg: dict, vocab_size: int) -> Mapped:
    """Map an EncDecMultiTaskModel config (and the output vocabulary, from the weights) to ModelDims."""
    target = str(cfg.get("target", MULTITASK))
    if target.rsplit(".", 1)[-1] != MULTITASK:
        raise NemoFormatError(f"target={target!r}: only {MULTITASK} (Canary) models can be imported")
    fmt = cfg.get("prompt_format")
    if fmt not in ("canary", "canary2"):
        raise NemoFormatError(f"prompt_format={fmt!r}: only 'canary' and 'canary2' are implemented")
    transf_encoder = cfg.get("transf_encoder") or {}
    if int(transf_encoder.get("num_layers", 0) or 0) > 0:
        raise NemoFormatError(f"transf_encoder.num_layers={transf_encoder['num_layers']}: a Transformer encoder "
                              "between the FastConformer and the decoder is not implemented")
    for key in ("encoder", "preprocessor", "transf_decoder", "head"):
        if not isinstance(cfg.get(key), dict):
            raise NemoFormatError(f"config key {key} is missing")
    defaults = {}
    for turn in cfg.get("prompt_defaults") or []:
        if turn.get("role") == "user":
            defaults.update(turn.get("slots") or {})
    mapped = Mapped(dims=ModelDims(), prompt_format=fmt, prompt_defaults=defaults)
    values: dict = {"vocab_size": vocab_size, "ctc_head": False, "attention_impl": "auto"}
    _preprocessor(cfg["preprocessor"], values, mapped.notes)
    _spec_augment(cfg.get("spec_augment"), values, mapped.notes)
    _encoder(cfg["encoder"], values, mapped)
    _decoder(cfg["transf_decoder"], values, mapped)
    _head(cfg["head"], values)
    model_defaults = cfg.get("model_defaults") or {}
    for key, want in (("asr_enc_hidden", values["encoder_dim"]), ("lm_dec_hidden", values["decoder_dim"])):
        if key in model_defaults and model_defaults[key] != want:
            raise NemoFormatError(f"model_defaults.{key}={model_defaults[key]} disagrees with the module width {want}")
    mapped.dims = ModelDims(**values)
    return mapped
