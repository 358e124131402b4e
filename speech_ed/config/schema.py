"""The configuration schema: one dataclass per section, enums as ``Literal`` types (checked by OmegaConf when
YAML and ``key=value`` overrides are merged, and by :func:`speech_ed.config.validate.check_literals`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from speech_ed.models.decoding import DecodeMode, DecodeOptions
from speech_ed.models.dims import ModelDims
from speech_ed.sampling.strategies import Strategy

InputFormat = Literal["auto", "lhotse", "shar", "nemo"]


@dataclass
class TokenizerConfig:
    vocab_size: int = 512
    """SentencePiece pieces, special tokens included."""
    model_type: Literal["bpe", "unigram"] = "bpe"
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
    format: InputFormat = "auto"
    """'auto' (a directory is Shar, a first line with ``audio_filepath`` is NeMo, else Lhotse), 'lhotse', 'shar'
    or 'nemo'."""
    name: str = ""
    """Name in logs and ``train_stats.json``; default: the file or directory name."""
    weight: Optional[float] = None
    """Share of this corpus in an epoch's cuts, relative to the others; give it for every input or for none
    (none: each corpus contributes its own number of cuts, i.e. every cut once per epoch)."""
    language: Optional[str] = None
    """Source language of cuts (lines) that carry none."""
    task: Optional[Literal["transcribe", "translate"]] = None
    """For cuts (lines) that carry none."""
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
    sampler: Strategy = "lhotse"
    """The batching strategy (:mod:`speech_ed.sampling.strategies`): 'lhotse' (lhotse's DynamicBucketingSampler,
    1D), '2d' (speech_ed 2D bucketing), '1d' (speech_ed 1D bucketing on the duration groups of ``bucket_bins``,
    batches by ``max_duration_s``) or 'random' (speech_ed's sampler, no buckets)."""
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
    """``bucket_bins.yaml`` from ``speech-ed estimate-bins`` (needed by '2d' and '1d')."""
    bucket_batch_sizes: str = ""
    """``bucket_batch_sizes.yaml`` from ``speech-ed oomptimize`` (optional, '2d' only)."""
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
    schedule: Literal["cosine", "inverse_sqrt"] = "cosine"
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
    precision: Literal["bf16-mixed", "32-true", "16-mixed", "bf16-true"] = "bf16-mixed"
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
    logger: Literal["csv", "wandb"] = "csv"
    """'wandb' is offline when no API key is configured."""
    resume_from: Optional[str] = "last"
    """'last': continue from ``<run_dir>/checkpoints/last.ckpt`` when it exists (else start); a path: continue
    from that checkpoint (it must exist); null: start from scratch even when a checkpoint exists."""
    max_bad_steps_in_a_row: int = 20
    """Stop with an error after this many consecutive steps with a NaN or infinite loss (each is skipped)."""
    wandb_project: str = "speech_ed"


@dataclass
class EvalConfig(DecodeOptions):
    """Decoding of ``speech-ed evaluate`` and the recipes' evaluate stage (docs/DECODING.md): the decoder's own
    :class:`~speech_ed.models.decoding.DecodeOptions` (every field, checked by its ``check``) with two defaults
    of its own (``mode``, ``beam_size``), plus what to decode and in which batches."""

    mode: Literal["auto", DecodeMode] = "auto"
    """'auto' (the measured default: 'joint' with a CTC head, else 'attention'), 'attention' (attention decoder
    alone), 'joint' (attention + CTC prefix scores) or 'ctc' (CTC best path)."""
    beam_size: int = 4
    """1: greedy (in 'joint': each token picked by the joint score among ``pre_beam`` candidates). 4 with
    'joint' and ctc_weight 0.3 was the best setting on the embedded dev split within half of greedy attention's
    RTFx (docs/DECODING.md)."""
    batch_size: int = 64
    split: Literal["dev", "test"] = "test"


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

    probe: Literal["auto", "cuda", "simulate", "cpu"] = "auto"
    """'auto' (:func:`speech_ed.oomptimizer.probes.resolve_probe`: cuda when training runs on a visible GPU,
    else simulate for ``target_gpu``, else cpu), 'cuda', 'simulate' or 'cpu'."""
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
