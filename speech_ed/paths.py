"""Where a run's files are: one :class:`RunPaths` built from a validated config.

Usage::

    paths = RunPaths.from_config(cfg)
    paths.manifest("train"), paths.tokenizer_model, paths.bucket_bins, paths.bucket_batch_sizes
    paths.checkpoints, paths.last_checkpoint, paths.model, paths.train_stats, paths.results

The layout is ``exp/<recipe>/<run>/`` (``cfg.run_dir``, i.e. ``${exp_dir}/${recipe}/${run}``)::

    manifests/cuts_<split>.jsonl.gz   tokenizer/tokenizer.model   bucket_bins.yaml   bucket_batch_sizes.yaml
    config.resolved.yaml   index_cache/   checkpoints/last.ckpt   logs/   model.pt   train_stats.json
    results.json   hypotheses[_<set>].json   RESULTS.md   .done/   slurm/

The config's own fields win where it has them (``data.manifest_dir``, ``tokenizer.path``, ``data.bucket_bins``,
``data.bucket_batch_sizes``, with whatever interpolation the YAML used); the names above are the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class _InRunDir:
    """A file or folder with a fixed name under the run folder (a read-only attribute of :class:`RunPaths`)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, paths, owner=None):
        return self if paths is None else paths.run_dir / self.name


@dataclass(frozen=True)
class RunPaths:
    """Every file of one run; see the module docstring for the layout."""

    run_dir: Path
    """``<exp_dir>/<recipe>/<run>``: every artefact of the run lives here unless the config points elsewhere."""
    manifest_dir: Path
    """``data.manifest_dir``, else ``<run_dir>/manifests``."""
    tokenizer_model: Path
    """``tokenizer.path``, else ``<tokenizer_dir>/tokenizer.model``."""
    bucket_bins: Path
    """``data.bucket_bins``, else ``<run_dir>/bucket_bins.yaml``."""
    bucket_batch_sizes: Path | None
    """``data.bucket_batch_sizes``; None when empty (batches follow ``data.max_duration_s``)."""

    @classmethod
    def in_folder(cls, run_dir) -> RunPaths:
        """The default layout of a run folder (also for tools given a folder rather than a config: ``pack-run``)."""
        run_dir = Path(run_dir)
        return cls(run_dir, run_dir / "manifests", run_dir / "tokenizer" / "tokenizer.model",
                   run_dir / "bucket_bins.yaml", run_dir / "bucket_batch_sizes.yaml")

    @classmethod
    def from_config(cls, cfg) -> RunPaths:
        """The paths of an :class:`speech_ed.config.ExperimentConfig` (already resolved and validated): its own
        fields where set, else :meth:`in_folder`'s names under ``cfg.run_dir``."""
        d, default = cfg.data, cls.in_folder(cfg.run_dir)
        return cls(default.run_dir,
                   Path(d.manifest_dir) if d.manifest_dir else default.manifest_dir,
                   Path(cfg.tokenizer.path) if cfg.tokenizer.path else default.tokenizer_model,
                   Path(d.bucket_bins) if d.bucket_bins else default.bucket_bins,
                   Path(d.bucket_batch_sizes) if d.bucket_batch_sizes else None)

    def manifest(self, split: str) -> Path:
        """``<manifest_dir>/cuts_<split>.jsonl.gz`` (split: train, dev, test or a corpus part)."""
        return self.manifest_dir / f"cuts_{split}.jsonl.gz"

    # fixed names under run_dir
    tokenizer_dir = _InRunDir("tokenizer")  # where the tokenizer stage writes tokenizer.{model,json}
    resolved_config = _InRunDir("config.resolved.yaml")
    index_cache = _InRunDir("index_cache")  # lengths-only indexes of the training inputs
    checkpoints = _InRunDir("checkpoints")
    model = _InRunDir("model.pt")  # dims + weights + tokenizer, written at the end of training
    train_stats = _InRunDir("train_stats.json")
    results = _InRunDir("results.json")
    results_markdown = _InRunDir("RESULTS.md")
    done_dir = _InRunDir(".done")  # the recipe's stage markers
    slurm_dir = _InRunDir("slurm")  # the SLURM script and SLURM's log folder

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def hypotheses(self, name: str | None = None) -> Path:
        """``hypotheses.json`` (one split) or ``hypotheses_<name>.json`` (one of several sets)."""
        return self.run_dir / (f"hypotheses_{name}.json" if name else "hypotheses.json")
