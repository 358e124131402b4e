"""Experiment configuration: a dataclass schema, YAML files and ``key=value`` overrides merged with OmegaConf.

Merge order (later wins): schema defaults < ``conf/model/<model_preset>.yaml`` < each YAML file given <
command-line ``key=value`` overrides. Unknown keys, wrong types and impossible combinations raise
:class:`ConfigError` naming the field, before any data is read.

Usage::

    cfg = load_config(["recipes/espeak_multilingual/config.yaml"], ["optim.lr=1e-3", "model_preset=tiny"])
    save_config(cfg, "exp/espeak_multilingual/run0/config.resolved.yaml")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from speech_ed.atomic import atomic_write_text
from speech_ed.models.dims import ModelDims, check_parity_options

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
MODEL_PRESET_DIR = CONF_DIR / "model"


class ConfigError(ValueError):
    """A configuration problem, reported before any data is read."""


@dataclass
class TokenizerConfig:
    vocab_size: int = 512
    """SentencePiece pieces, special tokens included."""
    model_type: str = "bpe"
    """'bpe' or 'unigram'."""
    path: str = ""
    """Trained tokenizer (``tokenizer.model``); empty means ``<run_dir>/tokenizer/tokenizer.model``."""
    pnc: bool = False
    """Default punctuation-and-casing flag put into the prompt."""
    languages: list[str] = field(default_factory=lambda: ["en", "de", "es", "it"])
    """Languages that get a prompt token; a cut in another language is skipped and counted."""


@dataclass
class InputConfig:
    """One training corpus of ``data.inputs``."""

    path: str = ""
    """A Lhotse cut manifest (``.jsonl[.gz]``), a Lhotse Shar directory or a NeMo JSON-lines manifest."""
    format: str = "auto"
    """'auto' (a directory is Shar, a first line with ``audio_filepath`` is NeMo, else Lhotse), 'lhotse', 'shar'
    or 'nemo'."""
    name: str = ""
    """Name in logs and ``train_stats.json``; default: the file or directory name."""
    weight: Optional[float] = None
    """Share of this corpus in an epoch's cuts, relative to the others; give it for every input or for none
    (none: each corpus contributes its own number of cuts, i.e. every cut once per epoch)."""
    language: Optional[str] = None
    """Source language of cuts (lines) that carry none."""
    task: Optional[str] = None
    """'transcribe' or 'translate', for cuts (lines) that carry none."""
    target_language: Optional[str] = None
    """Translation target language, for cuts (lines) that carry none."""


@dataclass
class DataConfig:
    inputs: list[InputConfig] = field(default_factory=list)
    """Training corpora mixed by weight (bucketing samplers only); empty: ``<manifest_dir>/cuts_train.jsonl.gz``."""
    cuts_per_epoch: Optional[int] = None
    """Cuts in one epoch of the mix; default: all cuts of all inputs once."""
    manifest_dir: str = ""
    """Folder with ``cuts_train.jsonl.gz``, ``cuts_dev.jsonl.gz``, ``cuts_test.jsonl.gz``; empty means
    ``<run_dir>/manifests``."""
    sampler: str = "dynamic"
    """'dynamic' (lhotse DynamicBucketingSampler, 1D), 'bucket2d' (speech_ed 2D bucketing), 'bucket1d' (speech_ed
    1D bucketing on the duration groups of ``bucket_bins``, batches by ``max_duration_s``) or 'random'."""
    max_duration_s: float = 90.0
    """Padding-aware budget: batch_size x longest utterance <= this, when no per-bucket sizes are given."""
    quadratic_duration_s: Optional[float] = None
    """Optional penalty: an utterance of d seconds counts as d + d^2 / q."""
    num_buckets: int = 30
    """Duration buckets (1D), or duration groups of the 2D bins."""
    num_sub_buckets: int = 4
    """Token sub-buckets per duration bucket when 2D bins are estimated."""
    strict_2d: bool = True
    """Strict 2D assignment drops (and counts) cuts that fit no bin or exceed a bucket's tokens-per-second cap;
    lenient moves them to a larger bucket."""
    bucket_bins: str = ""
    """``bucket_bins.yaml`` from ``speech-ed estimate-bins`` (needed by 'bucket2d' and 'bucket1d')."""
    bucket_batch_sizes: str = ""
    """``bucket_batch_sizes.yaml`` from ``speech-ed oomptimize`` (optional, 'bucket2d' only)."""
    shuffle: bool = True
    sortagrad: bool = True
    """First epoch runs shortest-first (helps the decoder align early); with 2D bins that epoch batches by
    duration group only (token-homogeneous 2D batches from the first step kept the model on the CTC blank
    plateau), and 2D batches start with the second epoch."""
    buffer_size: Optional[int] = None
    """Cuts the bucketing sampler buffers (about 100 bytes each, plus the manifest lines of this rank's own);
    null sizes it from the batch sizes and world size (twice what every rank needs to draw a full batch from
    one bucket, at least 50,000). A smaller value is warned about at start, naming the size needed."""
    num_workers: int = 1
    """DataLoader worker processes reading audio (soundfile)."""
    min_duration_s: float = 0.3
    max_utterance_s: float = 30.0
    """Longer utterances are skipped and counted."""
    seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 2e-3
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.01
    warmup_steps: int = 150
    schedule: str = "cosine"
    """'cosine' (to min_lr_ratio at the end of training) or 'inverse_sqrt'."""
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0


@dataclass
class LossConfig:
    label_smoothing: float = 0.1
    ctc_weight: float = 0.3
    """Weight of the auxiliary CTC loss (needs ``model.ctc_head``); the attention loss gets 1 - ctc_weight."""


@dataclass
class TrainerConfig:
    max_steps: int = 1500
    max_time_min: Optional[float] = None
    """Stop after this much training wall time; the cosine schedule then runs on elapsed time."""
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    num_threads: int = 0
    """torch intra-op threads (0 = torch default)."""
    log_every_n_steps: int = 10
    val_every_n_steps: int = 0
    """0 disables validation during training."""
    checkpoint_every_n_steps: int = 500
    logger: str = "csv"
    """'csv' or 'wandb' (offline when no API key is configured)."""
    resume_from: Optional[str] = "last"
    """'last': continue from ``<run_dir>/checkpoints/last.ckpt`` when it exists (else start); a path: continue
    from that checkpoint (it must exist); null: start from scratch even when a checkpoint exists."""
    max_bad_steps_in_a_row: int = 20
    """Stop with an error after this many consecutive steps with a NaN or infinite loss (each is skipped)."""
    wandb_project: str = "speech_ed"


@dataclass
class EvalConfig:
    """Decoding of ``speech-ed evaluate`` and the recipes' evaluate stage (docs/DECODING.md)."""

    batch_size: int = 64
    mode: str = "auto"
    """'auto' (the measured default: 'joint' with a CTC head, else 'attention'), 'attention' (attention decoder
    alone), 'joint' (attention + CTC prefix scores) or 'ctc' (CTC best path)."""
    beam_size: int = 4
    """1: greedy (in 'joint': each token picked by the joint score among ``pre_beam`` candidates). 4 with
    'joint' and ctc_weight 0.3 was the best setting on the embedded dev split within half of greedy attention's
    RTFx (docs/DECODING.md)."""
    ctc_weight: float = 0.3
    """'joint': weight of the CTC prefix score, in (0, 1)."""
    pre_beam: int = 0
    """'joint': attention candidates per hypothesis scored by CTC (0: max(4, 1.5 x beam_size))."""
    length_penalty: float = 1.0
    penalty_style: str = "gnmt"
    """Beam search length normalisation: 'gnmt' or 'simple'."""
    max_len_ratio: float = 0.6
    """Decode at most max_len_ratio x encoder frames + 3 tokens."""
    ctc_length_ratio: float = 0.0
    """Length guard (CTC head): at most ratio x CTC best-path tokens + 3 (0 = off)."""
    max_repeats: int = 0
    """Repetition guard: block a token that repeats the last n-gram more than this many times (0 = off)."""
    repeat_ngram: int = 4
    """Longest n-gram the repetition guard checks."""
    compact: bool = True
    """Drop finished rows from the decoding batch and its KV caches."""
    cuda_graph: bool = True
    """On CUDA, replay the fixed-shape decoder step as a CUDA graph."""
    split: str = "test"


@dataclass
class PrepareConfig:
    """Corpus preparation knobs read by a recipe's prepare stage (each recipe documents which it uses)."""

    languages: list[str] = field(default_factory=lambda: ["es", "it"])
    num_train: int = 6000
    """Training utterances per language."""
    num_dev: int = 50
    num_test: int = 200
    num_workers: int = 2
    data_dir: str = ""
    """Where an external corpus lives (e.g. LibriSpeech); unused by synthetic corpora."""
    train_parts: list[str] = field(default_factory=list)
    """External corpora: parts joined into the training manifest (e.g. LibriSpeech's train-clean-100)."""
    dev_parts: list[str] = field(default_factory=list)
    """External corpora: parts joined into the dev manifest (validation), each also evaluated on its own."""
    test_parts: list[str] = field(default_factory=list)
    """External corpora: parts evaluated one by one (a WER per part)."""
    download: bool = True
    """External corpora: download missing parts when the server is reachable (else stop, saying what to get)."""


@dataclass
class OomptimizeConfig:
    """How a recipe's batch-size stage runs ``speech-ed oomptimize`` (when ``data.bucket_batch_sizes`` is set)."""

    probe: str = "auto"
    """'auto' (cuda when a GPU is visible, else simulate for ``target_gpu``), 'cuda', 'simulate' or 'cpu'."""
    target_gpu: str = "h100-80gb"
    """GPU the simulate probe plans for (a name ``speech-ed oomptimize --target-gpu`` knows)."""
    memory_budget_gib: Optional[float] = None
    """Memory to fill; default: the GPU's (cuda) or ``target_gpu``'s (simulate). Required by 'cpu'."""
    memory_fraction: float = 0.9
    """Share of the budget used; lower it if training still runs out of memory."""


@dataclass
class ExperimentConfig:
    recipe: str = "espeak_multilingual"
    run: str = "default"
    exp_dir: str = "exp"
    seed: int = 0
    model_preset: str = "small"
    """Name of a file in conf/model/ whose values fill ``model`` before other overrides."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelDims = field(default_factory=ModelDims)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    oomptimize: OomptimizeConfig = field(default_factory=OomptimizeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.exp_dir) / self.recipe / self.run


def list_model_presets() -> list[str]:
    return sorted(p.stem for p in MODEL_PRESET_DIR.glob("*.yaml"))


def load_model_preset(name: str) -> ModelDims:
    """Return the :class:`ModelDims` of ``conf/model/<name>.yaml`` (validated against the schema)."""
    path = MODEL_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model_preset={name!r}: no such preset; choose one of {list_model_presets()}")
    merged = _merge(OmegaConf.structured(ModelDims), [OmegaConf.load(path)], f"model preset {path}")
    return OmegaConf.to_object(merged)


def _merge(base: DictConfig, parts: list, what: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *parts)
    except OmegaConfBaseException as e:  # unknown key or wrong type: name the field
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{what}: field {key!r}: {msg}") from None


def load_config(yaml_paths: list[str | os.PathLike] = (), overrides: list[str] = ()) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig`.

    Args:
        yaml_paths: YAML files merged in order.
        overrides: ``key=value`` strings (dotted keys), applied last.

    Raises:
        ConfigError: unknown key, wrong type or impossible combination, naming the field.
    """
    schema = OmegaConf.structured(ExperimentConfig)
    parts = []
    for p in yaml_paths:
        if not Path(p).is_file():
            raise ConfigError(f"config file {p} does not exist")
        parts.append(OmegaConf.load(p))
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"overrides: {e}") from None
    first = _merge(schema, parts + [cli], "config")
    preset = load_model_preset(first.model_preset)
    merged = _merge(schema, [OmegaConf.create({"model": OmegaConf.structured(preset)})] + parts + [cli], "config")
    cfg: ExperimentConfig = OmegaConf.to_object(merged)
    validate_config(cfg)
    return cfg


def validate_config(cfg: ExperimentConfig) -> None:
    """Cross-field checks; each error names the field and the fix."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.trainer

    def bad(field_name: str, why: str):
        raise ConfigError(f"{field_name}: {why}")

    if m.subsampling_factor not in (4, 8):
        bad("model.subsampling_factor", f"must be 4 or 8, got {m.subsampling_factor}")
    if m.subsampling not in ("conv2d", "dw_striding"):
        bad("model.subsampling", f"must be 'conv2d' or 'dw_striding', got {m.subsampling!r}")
    if m.encoder_dim % m.num_encoder_heads:
        bad("model.encoder_dim", f"{m.encoder_dim} is not divisible by num_encoder_heads={m.num_encoder_heads}")
    if m.decoder_dim % m.num_decoder_heads:
        bad("model.decoder_dim", f"{m.decoder_dim} is not divisible by num_decoder_heads={m.num_decoder_heads}")
    if m.pos_enc not in ("abs", "rel"):
        bad("model.pos_enc", f"must be 'abs' or 'rel', got {m.pos_enc!r}")
    if m.decoder_pos not in ("sinusoidal", "learned"):
        bad("model.decoder_pos", f"must be 'sinusoidal' or 'learned', got {m.decoder_pos!r}")
    if not 0.0 <= m.dropout < 1.0:
        bad("model.dropout", f"must be in [0, 1), got {m.dropout}")
    try:  # front-end / NeMo-parity options (ModelDims)
        check_parity_options(m, prefix="model.")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.loss.ctc_weight > 0 and not m.ctc_head:
        bad("loss.ctc_weight", f"is {cfg.loss.ctc_weight} but model.ctc_head is false; set one of them")
    if not 0.0 <= cfg.loss.ctc_weight < 1.0:
        bad("loss.ctc_weight", f"must be in [0, 1), got {cfg.loss.ctc_weight}")
    if cfg.tokenizer.model_type not in ("bpe", "unigram"):
        bad("tokenizer.model_type", f"must be 'bpe' or 'unigram', got {cfg.tokenizer.model_type!r}")
    missing = sorted(set(cfg.prepare.languages) - set(cfg.tokenizer.languages))
    if missing:
        bad("tokenizer.languages", f"lacks {missing}, which prepare.languages produces; add them")
    if not cfg.tokenizer.languages:
        bad("tokenizer.languages", "must list at least one language")
    if d.sampler not in ("dynamic", "bucket2d", "bucket1d", "random"):
        bad("data.sampler", f"must be 'dynamic', 'bucket2d', 'bucket1d' or 'random', got {d.sampler!r}")
    _validate_inputs(cfg, bad)
    if d.sampler in ("bucket2d", "bucket1d") and not d.bucket_bins:
        bad("data.bucket_bins", f"data.sampler={d.sampler} needs bucket bins; run `speech-ed estimate-bins` first")
    if d.bucket_batch_sizes and d.sampler != "bucket2d":
        bad("data.bucket_batch_sizes", "per-bucket batch sizes need data.sampler=bucket2d")
    if d.max_duration_s <= 0:
        bad("data.max_duration_s", f"must be positive, got {d.max_duration_s}")
    if d.max_duration_s < d.max_utterance_s and not d.bucket_batch_sizes:
        bad("data.max_duration_s", f"{d.max_duration_s} is below data.max_utterance_s={d.max_utterance_s}: "
            "the longest utterance would not fit in a batch")
    if d.quadratic_duration_s is not None and d.quadratic_duration_s <= 0:
        bad("data.quadratic_duration_s", "must be positive or null")
    if o.schedule not in ("cosine", "inverse_sqrt"):
        bad("optim.schedule", f"must be 'cosine' or 'inverse_sqrt', got {o.schedule!r}")
    if len(o.betas) != 2:
        bad("optim.betas", f"needs two values, got {list(o.betas)}")
    if o.lr <= 0:
        bad("optim.lr", f"must be positive, got {o.lr}")
    if t.max_steps <= 0:
        bad("trainer.max_steps", f"must be positive, got {t.max_steps}")
    if o.warmup_steps >= t.max_steps and t.max_time_min is None:
        bad("optim.warmup_steps", f"{o.warmup_steps} is not below trainer.max_steps={t.max_steps}")
    if t.logger not in ("csv", "wandb"):
        bad("trainer.logger", f"must be 'csv' or 'wandb', got {t.logger!r}")
    if t.precision not in ("bf16-mixed", "32-true", "16-mixed", "bf16-true"):
        bad("trainer.precision", f"unsupported {t.precision!r}")
    if t.max_bad_steps_in_a_row < 1:
        bad("trainer.max_bad_steps_in_a_row", f"must be >= 1, got {t.max_bad_steps_in_a_row}")
    if t.resume_from not in (None, "", "last") and not Path(t.resume_from).is_file():
        bad("trainer.resume_from", f"{t.resume_from} does not exist; give a checkpoint file, 'last' or null")
    if cfg.eval.beam_size < 1:
        bad("eval.beam_size", f"must be >= 1, got {cfg.eval.beam_size}")
    ev = cfg.eval
    if ev.mode not in ("auto", "attention", "joint", "ctc"):
        bad("eval.mode", f"must be 'auto', 'attention', 'joint' or 'ctc', got {ev.mode!r}")
    if ev.mode in ("joint", "ctc") and not m.ctc_head:
        bad("eval.mode", f"{ev.mode!r} needs model.ctc_head=true; use eval.mode=attention or auto")
    if not 0.0 < ev.ctc_weight < 1.0:
        bad("eval.ctc_weight", f"must be in (0, 1), got {ev.ctc_weight}")
    if ev.penalty_style not in ("gnmt", "simple"):
        bad("eval.penalty_style", f"must be 'gnmt' or 'simple', got {ev.penalty_style!r}")
    if ev.max_repeats < 0 or ev.repeat_ngram < 1 or ev.pre_beam < 0 or ev.ctc_length_ratio < 0:
        bad("eval.max_repeats", "max_repeats, pre_beam and ctc_length_ratio must be >= 0, repeat_ngram >= 1")
    if cfg.oomptimize.probe not in ("auto", "cuda", "simulate", "cpu"):
        bad("oomptimize.probe", f"must be 'auto', 'cuda', 'simulate' or 'cpu', got {cfg.oomptimize.probe!r}")
    if cfg.oomptimize.probe == "cpu" and cfg.oomptimize.memory_budget_gib is None:
        bad("oomptimize.memory_budget_gib", "oomptimize.probe=cpu needs a memory budget in GiB")
    if not 0.0 < cfg.oomptimize.memory_fraction <= 1.0:
        bad("oomptimize.memory_fraction", f"must be in (0, 1], got {cfg.oomptimize.memory_fraction}")
    if cfg.eval.split not in ("dev", "test"):
        bad("eval.split", f"must be 'dev' or 'test', got {cfg.eval.split!r}")


def _validate_inputs(cfg: ExperimentConfig, bad) -> None:
    d = cfg.data
    if d.buffer_size is not None and d.buffer_size < 1:
        bad("data.buffer_size", f"must be >= 1 or null (automatic), got {d.buffer_size}")
    if d.cuts_per_epoch is not None and d.cuts_per_epoch < 1:
        bad("data.cuts_per_epoch", f"must be >= 1 or null (all cuts once), got {d.cuts_per_epoch}")
    if not d.inputs:
        return
    if d.sampler == "dynamic":
        bad("data.inputs", "several weighted inputs need a speech_ed sampler: data.sampler=bucket2d, bucket1d or random")
    weighted = [i.weight is not None for i in d.inputs]
    if any(weighted) and not all(weighted):
        bad("data.inputs", "give a weight for every input or for none (none: each corpus once per epoch)")
    names = []
    for k, i in enumerate(d.inputs):
        where = f"data.inputs[{k}]"
        if not i.path:
            bad(f"{where}.path", "is empty; give a manifest file, Shar directory or NeMo manifest")
        if not Path(i.path).exists():
            bad(f"{where}.path", f"{i.path} does not exist")
        if i.format not in ("auto", "lhotse", "shar", "nemo"):
            bad(f"{where}.format", f"must be 'auto', 'lhotse', 'shar' or 'nemo', got {i.format!r}")
        if i.weight is not None and not i.weight > 0:
            bad(f"{where}.weight", f"must be positive, got {i.weight}")
        if i.task not in (None, "transcribe", "translate"):
            bad(f"{where}.task", f"must be 'transcribe', 'translate' or null, got {i.task!r}")
        for lang_field in ("language", "target_language"):
            lang = getattr(i, lang_field)
            if lang is not None and lang not in cfg.tokenizer.languages:
                bad(f"{where}.{lang_field}", f"{lang!r} is not in tokenizer.languages {list(cfg.tokenizer.languages)}")
        path = Path(i.path)
        names.append(i.name or (path.name if path.is_dir() else path.name.split(".")[0]))
    if len(set(names)) != len(names):
        bad("data.inputs", f"inputs need distinct names, got {names}; set data.inputs[k].name")


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config atomically (write, then rename)."""
    atomic_write_text(path, config_to_yaml(cfg))


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
