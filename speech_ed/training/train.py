"""Training entry point, readable top to bottom.

Usage::

    speech-ed train --config recipes/espeak_multilingual/config.yaml run=my_run trainer.max_steps=200

Writes under ``exp/<recipe>/<run>/``: ``config.resolved.yaml``, ``checkpoints/`` (Lightning, resumable),
``logs/`` (CSV or W&B), ``model.pt`` (dims + weights + tokenizer, for evaluation and transcription) and
``train_stats.json`` (steps, wall time, throughput, every skip count).

Resume (``trainer.resume_from``): 'last' (default) continues from ``checkpoints/last.ckpt`` when it exists, so
re-running the same command after a crash or preemption continues exactly where the checkpoint was taken (the
sampler state is in the checkpoint); a path continues from that file; null starts afresh. Checkpoints are
written to a temporary file, flushed and renamed, so a kill mid-write never leaves a truncated ``last.ckpt``;
a checkpoint that cannot be read is refused with its path, never silently replaced by a fresh start.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from speech_ed.atomic import atomic_write_binary, atomic_write_json
from speech_ed.config import ConfigError, ExperimentConfig, config_to_yaml, save_config
from speech_ed.data.datamodule import AEDDataModule, load_bucketing
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.models.checkpoint import save_model_file
from speech_ed.paths import RunPaths
from speech_ed.training.callbacks import ThroughputLogger
from speech_ed.training.module import AEDLightningModule


def progress_bar(every_n_steps: int, time_bounded: bool = False):
    """Lightning's bar, redrawn every step on a terminal but only every ``every_n_steps`` steps in a log file
    (a bar per step makes a 12-minute run's log tens of thousands of lines). A run with a time limit
    (``time_bounded``) ends when its clock does, whatever its step limit says, so its bar shows no step total
    (nor an ETA taken from it)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class Bar(TQDMProgressBar):
        @property
        def total_train_batches(self):
            total = super().total_train_batches
            return float("inf") if time_bounded else total

    return Bar(refresh_rate=1 if sys.stderr.isatty() else max(1, every_n_steps))


def build_logger(cfg: ExperimentConfig, run_dir: Path):
    if cfg.trainer.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        from speech_ed.wandb_mode import wandb_offline

        # Without an API key the run is written offline and can be synced later with `wandb sync`.
        return WandbLogger(project=cfg.trainer.wandb_project, name=f"{cfg.recipe}/{cfg.run}", save_dir=str(run_dir),
                           offline=wandb_offline(), config=dataclasses.asdict(cfg), group=f"{cfg.recipe}/{cfg.run}")
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(run_dir), name="logs", version="")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written atomically in their own folder, and a clear error for an unreadable one.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temporary
    folder; when that is another filesystem the final step is a copy, which a kill can leave truncated.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_write_binary(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it was not "
                               "used. Resume from another checkpoint (trainer.resume_from=PATH) or start afresh "
                               "(trainer.resume_from=null)") from e


def resume_checkpoint(cfg: ExperimentConfig) -> Path | None:
    """The checkpoint ``trainer.resume_from`` asks for, or None for a fresh start."""
    resume = cfg.trainer.resume_from
    if resume in (None, ""):
        return None
    if resume == "last":
        last = RunPaths.from_config(cfg).last_checkpoint
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"trainer.resume_from: {path} does not exist; give a checkpoint file, 'last' or null")
    return path


def train(cfg: ExperimentConfig, callbacks: tuple = ()) -> Path:
    """Train (resuming as ``trainer.resume_from`` says) and export ``model.pt``; returns its path.

    Args:
        cfg: the resolved config.
        callbacks: extra Lightning callbacks (tests use them to record batches or to inject faults).
    """
    paths = RunPaths.from_config(cfg)
    run_dir = paths.run_dir
    ckpt_path = resume_checkpoint(cfg)
    save_config(cfg, paths.resolved_config)
    print(config_to_yaml(cfg))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)

    tokenizer = Tokenizer.load(paths.tokenizer_model)
    bucketing = load_bucketing(cfg)  # bins + batch sizes read and checked together once, before any data
    if bucketing is not None and bucketing.batch_sizes is not None:  # refuse sizes measured for another model
        from speech_ed.oomptimizer import check_model_hash

        check_model_hash(bucketing.batch_sizes_fields, bucketing.batch_sizes_path,
                         dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size))
    datamodule = AEDDataModule(cfg, tokenizer, bucketing)
    module = AEDLightningModule(dataclasses.asdict(cfg), tokenizer.vocab_size)
    if ckpt_path is not None:
        print(f"resuming from {ckpt_path}")
    n_params = sum(p.numel() for p in module.model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters, vocabulary {tokenizer.vocab_size}")

    t = cfg.trainer
    ckpt_dir = paths.checkpoints
    for stale in ckpt_dir.glob(".*.tmp"):  # left by a kill mid-write; never read
        stale.unlink(missing_ok=True)
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), every_n_train_steps=t.checkpoint_every_n_steps,
                                 save_last=True, save_top_k=0)
    validate = t.val_every_n_steps > 0
    trainer = L.Trainer(
        max_steps=t.max_steps, max_epochs=-1,
        max_time={"minutes": t.max_time_min} if t.max_time_min else None,
        precision=t.precision, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, logger=build_logger(cfg, run_dir),
        callbacks=[ThroughputLogger(cfg.model.sample_rate), checkpoint,
                   progress_bar(t.log_every_n_steps, time_bounded=bool(t.max_time_min)),
                   *callbacks],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=t.val_every_n_steps if validate else None, check_val_every_n_epoch=None,
        limit_val_batches=None if validate else 0, num_sanity_val_steps=0,
        use_distributed_sampler=False,  # our samplers shard by rank themselves
        enable_model_summary=False, default_root_dir=str(run_dir),
    )
    t0 = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except torch.OutOfMemoryError as e:
        from speech_ed.oomptimizer import out_of_memory_advice

        sampler = datamodule.sampler
        where = (f"bucket {getattr(sampler, 'last_bucket', '?')} "
                 f"(batch size {getattr(module, 'last_batch_size', '?')})")
        raise RuntimeError(f"{where}: {out_of_memory_advice(cfg.data.bucket_batch_sizes)}") from e
    wall_s = time.monotonic() - t0

    model_path = paths.model
    if trainer.is_global_zero:
        extra = {"tokenizer_model": paths.tokenizer_model.read_bytes(), "tokenizer_meta": tokenizer.meta,
                 "config": dataclasses.asdict(cfg), "global_step": trainer.global_step}
        save_model_file(model_path, module.model, module.dims, extra)
        throughput = next(c for c in trainer.callbacks if isinstance(c, ThroughputLogger))
        stats = {"global_step": trainer.global_step, "wall_seconds": round(wall_s, 1),
                 "parameters": n_params, "audio_seconds_seen": round(throughput.audio_seconds, 1),
                 "audio_seconds_per_second": round(throughput.audio_seconds / max(wall_s, 1e-9), 2),
                 "skipped_before_sampling": datamodule.skip_counts(),
                 "skipped_at_loading": dict(module.skipped), "unknown_pieces": module.unk_pieces,
                 "non_finite_steps": module.non_finite_steps, "empty_batches": module.empty_batches,
                 "sampler_stats": dict(getattr(datamodule.sampler, "stats", {}) or {}),
                 "corpora": datamodule.corpus_stats()}
        atomic_write_json(paths.train_stats, stats)
        print("training done:", json.dumps(stats))
    return model_path
