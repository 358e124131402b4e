"""Search every bucket with a probe and collect what each trial measured; run the OOMptimizer for a config.

Usage::

    results = run_oomptimizer(bins_as_pairs(bins), probe)                 # the search alone
    probe, dims = build_config_probe(cfg, "simulate", vocab_size, target_gpu="h100-80gb")
    results, sizes = search_and_save(bins, probe, dims, cfg.trainer.precision, "bucket_batch_sizes.yaml", ...)
    sizes = oomptimize_for_config(cfg, "bucket_bins.yaml", "cpu", "bucket_batch_sizes.yaml", memory_budget_gib=4)
    oomptimize_for_run(cfg)              # recipe stage: data.bucket_batch_sizes, kept when it exists

``speech-ed oomptimize`` calls :func:`oomptimize_for_config`, a recipe's batch-size stage
:func:`oomptimize_for_run` (which calls it), and the efficiency study's budgets :func:`build_config_probe` and
:func:`search_and_save`.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from speech_ed.oomptimizer.probes import GiB, Probe, TrialResult, make_probe
from speech_ed.oomptimizer.search import search_buckets

SIMULATE_DEFAULT_MARGIN = 0.1
"""Safety margin of the 'simulate' probe, whose estimate is not a measurement (others: 0)."""


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass
class BucketResult:
    """The search outcome of one bucket."""

    bucket: int
    max_duration_s: float
    max_tokens: int
    batch_size: int
    """Largest size that fitted (0: not even one example fits)."""
    peak_bytes: int | None
    """Peak memory measured at ``batch_size``."""
    trials: list[TrialResult] = field(default_factory=list)
    capped: bool = False
    seconds: float = 0.0


def run_oomptimizer(bins: Sequence[tuple[float, int]], probe: Probe, start: int = 32, rel_gap: float = 0.05,
                    max_batch_size: int = 1 << 16, log: Callable[[str], None] | None = None
                    ) -> list[BucketResult]:
    """Find the largest batch size of every bucket, largest bucket first.

    Args:
        bins: ``(max_duration_s, max_tokens)`` per bucket.
        probe: a :class:`speech_ed.oomptimizer.probes.Probe`.
        start, rel_gap, max_batch_size: see :func:`speech_ed.oomptimizer.search.find_max_batch_size`.
        log: called with one line per finished bucket.

    Returns:
        One :class:`BucketResult` per bucket, in the order of ``bins``.
    """
    trials: dict[int, list[TrialResult]] = {b: [] for b in range(len(bins))}
    t_start: dict[int, float] = {}

    def fits(b: int, batch_size: int) -> bool:
        t_start.setdefault(b, time.perf_counter())
        res = probe.trial(batch_size, bins[b][0], bins[b][1])
        trials[b].append(res)
        return res.fits

    out: dict[int, BucketResult] = {}

    def done(b: int, res) -> None:
        ok = [t for t in trials[b] if t.fits and t.batch_size == res.batch_size]
        r = BucketResult(b, float(bins[b][0]), int(bins[b][1]), res.batch_size,
                         ok[-1].peak_bytes if ok else None, trials[b], res.capped,
                         time.perf_counter() - t_start[b])
        out[b] = r
        if log is not None:
            peak = f"{r.peak_bytes / GiB:.3f}" if r.peak_bytes is not None else "-"
            log(f"bucket {b:3d} ({r.max_duration_s:g} s, {r.max_tokens} tokens): batch size {r.batch_size} "
                f"(peak {peak} GiB, {len(r.trials)} trials, {r.seconds:.1f} s)"
                + (" capped" if r.capped else ""))

    search_buckets(bins, fits, start, rel_gap, max_batch_size, on_result=done)
    return [out[b] for b in range(len(bins))]


def apply_safety_margin(batch_sizes: Sequence[int], safety_margin: float) -> list[int]:
    """Shrink every size by ``safety_margin`` (a fraction), never below 1.

    Raises:
        ValueError: margin outside [0, 1), or a bucket where not even one example fits (size 0).
    """
    if not 0.0 <= safety_margin < 1.0:
        raise ValueError(f"--safety-margin must be in [0, 1), got {safety_margin}")
    bad = [i for i, b in enumerate(batch_sizes) if b < 1]
    if bad:
        raise ValueError(f"buckets {bad} do not fit even one example in the memory limit; lower their bounds "
                         "(fewer seconds or tokens per bucket), use a bigger budget, or a smaller model")
    return [max(1, math.floor(b * (1.0 - safety_margin))) for b in batch_sizes]


class BatchSizeError(ValueError):
    """The searched sizes cannot be used: a bucket fits no example, or the safety margin is out of range."""

    def __init__(self, message: str, buckets: Sequence[int] = ()):
        super().__init__(message)
        self.buckets = list(buckets)
        """Buckets where not even one example fits."""


def format_table(results: Sequence[BucketResult]) -> str:
    """Per-bucket table: bins, batch size, peak memory and trials."""
    rows = [f"{'bucket':>6} {'max_s':>8} {'max_tok':>7} {'batch':>6} {'peak_GiB':>9} {'trials':>6} {'sec':>6}"]
    for r in results:
        peak = f"{r.peak_bytes / GiB:9.3f}" if r.peak_bytes is not None else f"{'-':>9}"
        rows.append(f"{r.bucket:>6} {r.max_duration_s:>8.3f} {r.max_tokens:>7} {r.batch_size:>6} {peak} "
                    f"{len(r.trials):>6} {r.seconds:>6.1f}")
    return "\n".join(rows)


def resolve_vocab_size(cfg, explicit: int | None = None) -> tuple[int, str]:
    """Vocabulary size training will build the model with, and where it came from."""
    from speech_ed.paths import RunPaths

    if explicit:
        return explicit, "--vocab-size"
    path = RunPaths.from_config(cfg).tokenizer_model
    if path.is_file():
        from speech_ed.data.tokenizer import Tokenizer

        return Tokenizer.load(path).vocab_size, str(path)
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size, "model.vocab_size"
    return cfg.tokenizer.vocab_size, "tokenizer.vocab_size (no trained tokenizer found)"


def build_config_probe(cfg, kind: str, vocab_size: int, memory_budget_gib: float | None = None,
                       memory_fraction: float = 0.9, target_gpu: str | None = None, ddp_copy: bool = True):
    """The probe of ``cfg``'s model (with ``vocab_size``, as training builds it) and training step.

    Returns:
        ``(probe, dims)``; see :func:`speech_ed.oomptimizer.probes.make_probe` for ``kind`` and the budget.
    """
    from speech_ed.oomptimizer.step import StepSettings

    dims = replace(cfg.model, vocab_size=vocab_size)  # as training does: the tokenizer's size wins
    settings = StepSettings.from_config(cfg, ddp_copy=ddp_copy)
    return make_probe(kind, dims, settings, memory_budget_gib, memory_fraction, target_gpu), dims


def search_and_save(bins, probe: Probe, dims, precision: str, out, memory_budget_gib: float | None,
                    memory_fraction: float, safety_margin: float, command: str, start: int = 32,
                    rel_gap: float = 0.05, max_batch_size: int = 1 << 16,
                    log: Callable[[str], None] | None = None, table: bool = False
                    ) -> tuple[list[BucketResult], list[int]]:
    """Search every bucket of ``bins`` with ``probe``, shrink by ``safety_margin`` and write ``out``.

    Args:
        bins: a :class:`speech_ed.sampling.bins.BucketBins`.
        out: the ``bucket_batch_sizes.yaml`` to write (the bins, sizes and provenance; see ``io.save_batch_sizes``).
        command: the command line stored in the file (quoted in mismatch errors).
        log: called with each progress line (and, with ``table``, the per-bucket table and a capped note).

    Returns:
        ``(results, batch_sizes)``.

    Raises:
        BatchSizeError: a bucket fits no example, or the margin is outside [0, 1); nothing is written.
    """
    from speech_ed.oomptimizer.io import bins_as_pairs, save_batch_sizes

    results = run_oomptimizer(bins_as_pairs(bins), probe, start, rel_gap, max_batch_size, log=log)
    if table and log is not None:
        log(format_table(results))
    try:
        sizes = apply_safety_margin([r.batch_size for r in results], safety_margin)
    except ValueError as e:
        raise BatchSizeError(str(e), [r.bucket for r in results if r.batch_size < 1]) from None
    capped = [r.bucket for r in results if r.capped]
    if capped and table and log is not None:
        log(f"note: buckets {capped} fit --max-batch-size={max_batch_size}; their true maximum is larger")
    save_batch_sizes(out, bins, results, sizes, probe, dims, precision, memory_budget_gib, memory_fraction,
                     safety_margin, command, {"start": start, "rel_gap": rel_gap})
    return results, sizes


def oomptimize_command(config_paths: Sequence[str], overrides: Sequence[str], bins, probe: str, out,
                       memory_fraction: float = 0.9, start: int = 32, rel_gap: float = 0.05,
                       memory_budget_gib: float | None = None, target_gpu: str | None = None,
                       safety_margin: float | None = None, ddp_copy: bool = True,
                       vocab_size: int | None = None) -> str:
    """The ``speech-ed oomptimize`` command line that reproduces a run (stored in the YAML for error messages)."""
    parts = ["speech-ed", "oomptimize"]
    for c in config_paths:
        parts += ["--config", str(c)]
    parts += ["--bins", str(bins), "--probe", probe, "--out", str(out), "--memory-fraction", f"{memory_fraction:g}"]
    if start != 32:
        parts += ["--start-batch-size", str(start)]
    if rel_gap != 0.05:
        parts += ["--rel-gap", f"{rel_gap:g}"]
    if memory_budget_gib is not None:
        parts += ["--memory-budget-gib", f"{memory_budget_gib:g}"]
    if target_gpu:
        parts += ["--target-gpu", target_gpu]
    if safety_margin is not None:
        parts += ["--safety-margin", f"{safety_margin:g}"]
    if not ddp_copy:
        parts.append("--no-ddp-copy")
    if vocab_size:
        parts += ["--vocab-size", str(vocab_size)]
    return " ".join(shlex.quote(p) for p in parts + list(overrides))


def oomptimize_for_config(cfg, bins_path, probe: str, out, memory_budget_gib: float | None = None,
                          memory_fraction: float = 0.9, target_gpu: str | None = None,
                          safety_margin: float | None = None, start: int = 32, rel_gap: float = 0.05,
                          max_batch_size: int = 1 << 16, ddp_copy: bool = True, vocab_size: int | None = None,
                          command: str = "", log: Callable[[str], None] = _say) -> list[int]:
    """``speech-ed oomptimize``: the largest batch size of every bucket of ``bins_path`` for ``cfg``'s model and
    training step, written to ``out``; the progress, the table and the result are logged.

    ``safety_margin`` None means :data:`SIMULATE_DEFAULT_MARGIN` for 'simulate', else 0.

    Returns:
        The batch sizes written.

    Raises:
        BatchSizeError: see :func:`search_and_save`.
    """
    from speech_ed.oomptimizer.io import bins_as_pairs
    from speech_ed.sampling.io import load_bucket_bins

    bins = load_bucket_bins(bins_path)
    vocab, vocab_from = resolve_vocab_size(cfg, vocab_size)
    margin = safety_margin
    if margin is None:
        margin = SIMULATE_DEFAULT_MARGIN if probe == "simulate" else 0.0
    probe_, dims = build_config_probe(cfg, probe, vocab, memory_budget_gib, memory_fraction, target_gpu, ddp_copy)
    log(f"oomptimize: {len(bins_as_pairs(bins))} buckets, probe {probe_.name} on {probe_.device_name}, limit "
        f"{probe_.limit_bytes / (1 << 30):.3f} GiB, {cfg.trainer.precision}, vocabulary {vocab} "
        f"({vocab_from}), model preset {cfg.model_preset}")
    _, sizes = search_and_save(bins, probe_, dims, cfg.trainer.precision, out, memory_budget_gib, memory_fraction,
                               margin, command, start, rel_gap, max_batch_size, log=log, table=True)
    log(f"wrote {out}: batch sizes {sizes}" + (f" (safety margin {margin:g})" if margin else ""))
    return sizes


def oomptimize_for_run(cfg, log: Callable[[str], None] = _say) -> None:
    """Recipe stage: :func:`oomptimize_for_config` for ``data.bucket_batch_sizes`` (kept when it exists).

    ``oomptimize.probe`` 'auto' is :func:`speech_ed.oomptimizer.probes.resolve_probe`'s (cuda on a GPU, else
    simulate for ``oomptimize.target_gpu``); a simulated target GPU's memory is used unless
    ``oomptimize.memory_budget_gib`` is given. The config is saved as ``config.resolved.yaml`` first and named
    in the stored command.

    Raises:
        RuntimeError: the sizes cannot be used (see :class:`BatchSizeError`).
    """
    from speech_ed.config import save_config
    from speech_ed.paths import RunPaths

    paths = RunPaths.from_config(cfg)
    out = paths.bucket_batch_sizes
    if out is None:
        log("data.bucket_batch_sizes is empty: batches follow data.max_duration_s, nothing to measure")
        return
    if out.is_file():
        log(f"oomptimize: {out} exists, kept (delete it to measure again)")
        return
    from speech_ed.oomptimizer.probes import resolve_probe

    o = cfg.oomptimize
    probe = resolve_probe(o.probe, cfg.trainer.accelerator, o.target_gpu)
    target_gpu = o.target_gpu if probe == "simulate" and o.memory_budget_gib is None else None
    save_config(cfg, paths.resolved_config)
    command = oomptimize_command([str(paths.resolved_config)], [], cfg.data.bucket_bins, probe,
                                 cfg.data.bucket_batch_sizes, o.memory_fraction, memory_budget_gib=o.memory_budget_gib,
                                 target_gpu=target_gpu)
    try:
        oomptimize_for_config(cfg, cfg.data.bucket_bins, probe, cfg.data.bucket_batch_sizes, o.memory_budget_gib,
                              o.memory_fraction, target_gpu, command=command, log=log)
    except BatchSizeError as e:
        import sys

        print(f"oomptimize: {e}", file=sys.stderr)
        raise RuntimeError("oomptimize failed (see above); set data.bucket_batch_sizes='' to train with "
                           "data.max_duration_s instead") from e
