"""``speech-ed oomptimize``: the largest batch size of every bucket, measured on a GPU or a CPU, or planned.

Usage::

    # on the training GPU (real out-of-memory errors, 90% of its memory):
    speech-ed oomptimize --config recipes/x/config.yaml --bins exp/x/run/bucket_bins.yaml --probe cuda \\
        --out exp/x/run/bucket_batch_sizes.yaml
    # plan for an 80 GB H100 from a laptop (fake tensors, nothing allocated):
    speech-ed oomptimize --config ... --bins ... --probe simulate --target-gpu h100-80gb --out ...
    # CPU training with 4 GiB of tensor memory:
    speech-ed oomptimize --config ... --bins ... --probe cpu --memory-budget-gib 4 --out ...

Prints one row per bucket (bins, batch size, peak memory, trials) and writes the YAML that
``data.bucket_batch_sizes`` points to. If training still runs out of memory, re-run with a lower
``--memory-fraction`` (0.75, then 0.6) or a ``--safety-margin``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import replace
from pathlib import Path

from speech_ed.config import load_config

SIMULATE_DEFAULT_MARGIN = 0.1


def add_arguments(parser) -> None:
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config (repeatable, merged in order)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model_preset=tiny")
    parser.add_argument("--bins", required=True, help="bucket_bins.yaml from `speech-ed estimate-bins`")
    parser.add_argument("--probe", required=True, choices=("cuda", "cpu", "simulate"),
                        help="cuda: real OOMs on this GPU; cpu: measured peak vs --memory-budget-gib; "
                             "simulate: fake-tensor estimate for --target-gpu or --memory-budget-gib")
    parser.add_argument("--out", required=True, help="where to write bucket_batch_sizes.yaml")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="memory to fill, GiB (cuda: defaults to the GPU's; cpu: required)")
    parser.add_argument("--memory-fraction", type=float, default=0.9,
                        help="use this share of the budget (default 0.9; lower it if training still OOMs)")
    parser.add_argument("--target-gpu", default=None,
                        help="simulate: plan for this GPU (a100-40gb, a100-80gb, h100-80gb, h200-141gb, ...)")
    parser.add_argument("--safety-margin", type=float, default=None,
                        help=f"shrink every found size by this fraction (default 0; "
                             f"{SIMULATE_DEFAULT_MARGIN} for simulate, whose estimate is not a measurement)")
    parser.add_argument("--start-batch-size", type=int, default=32,
                        help="first size tried on the largest bucket")
    parser.add_argument("--rel-gap", type=float, default=0.05,
                        help="stop when the largest fit and smallest failure are this close (relative)")
    parser.add_argument("--max-batch-size", type=int, default=1 << 16, help="never try a larger size")
    parser.add_argument("--no-ddp-copy", action="store_true",
                        help="no second model copy resident (it stands in for data-parallel buffers)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary size (default: the run's tokenizer, else the config's "
                             "tokenizer.vocab_size)")


def resolve_vocab_size(cfg, explicit: int | None) -> tuple[int, str]:
    """Vocabulary size training will build the model with, and where it came from."""
    if explicit:
        return explicit, "--vocab-size"
    path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else cfg.run_dir / "tokenizer" / "tokenizer.model"
    if path.is_file():
        from speech_ed.data.tokenizer import Tokenizer

        return Tokenizer.load(path).vocab_size, str(path)
    if cfg.model.vocab_size > 0:
        return cfg.model.vocab_size, "model.vocab_size"
    return cfg.tokenizer.vocab_size, "tokenizer.vocab_size (no trained tokenizer found)"


def format_table(results) -> str:
    """Per-bucket table: bins, batch size, peak memory and trials."""
    from speech_ed.oomptimizer.probes import GiB

    rows = [f"{'bucket':>6} {'max_s':>8} {'max_tok':>7} {'batch':>6} {'peak_GiB':>9} {'trials':>6} "
            f"{'sec':>6}"]
    for r in results:
        peak = f"{r.peak_bytes / GiB:9.3f}" if r.peak_bytes is not None else f"{'-':>9}"
        rows.append(f"{r.bucket:>6} {r.max_duration_s:>8.3f} {r.max_tokens:>7} {r.batch_size:>6} {peak} "
                    f"{len(r.trials):>6} {r.seconds:>6.1f}")
    return "\n".join(rows)


def main(args) -> int:
    from speech_ed.oomptimizer.io import bins_as_pairs, save_batch_sizes
    from speech_ed.oomptimizer.probes import make_probe
    from speech_ed.oomptimizer.runner import apply_safety_margin, run_oomptimizer
    from speech_ed.oomptimizer.step import StepSettings
    from speech_ed.sampling.io import load_bucket_bins

    cfg = load_config(args.config, args.overrides)
    bins = load_bucket_bins(args.bins)
    vocab, vocab_from = resolve_vocab_size(cfg, args.vocab_size)
    dims = replace(cfg.model, vocab_size=vocab)  # as training does: the tokenizer's size wins
    settings = StepSettings.from_config(cfg, ddp_copy=not args.no_ddp_copy)
    margin = args.safety_margin
    if margin is None:
        margin = SIMULATE_DEFAULT_MARGIN if args.probe == "simulate" else 0.0
    probe = make_probe(args.probe, dims, settings, args.memory_budget_gib, args.memory_fraction,
                       args.target_gpu)
    pairs = bins_as_pairs(bins)
    print(f"oomptimize: {len(pairs)} buckets, probe {probe.name} on {probe.device_name}, limit "
          f"{probe.limit_bytes / (1 << 30):.3f} GiB, {cfg.trainer.precision}, vocabulary {vocab} "
          f"({vocab_from}), model preset {cfg.model_preset}", flush=True)
    results = run_oomptimizer(pairs, probe, args.start_batch_size, args.rel_gap, args.max_batch_size,
                              log=lambda line: print(line, flush=True))
    print(format_table(results))
    try:
        sizes = apply_safety_margin([r.batch_size for r in results], margin)
    except ValueError as e:
        print(f"oomptimize: {e}", file=sys.stderr)
        return 1
    capped = [r.bucket for r in results if r.capped]
    if capped:
        print(f"note: buckets {capped} fit --max-batch-size={args.max_batch_size}; their true maximum is "
              "larger")
    command = regenerate_command(args)
    save_batch_sizes(args.out, bins, results, sizes, probe, dims, cfg.trainer.precision,
                     args.memory_budget_gib, args.memory_fraction, margin, command,
                     {"start": args.start_batch_size, "rel_gap": args.rel_gap})
    print(f"wrote {args.out}: batch sizes {sizes}" + (f" (safety margin {margin:g})" if margin else ""))
    return 0


def regenerate_command(args) -> str:
    """The command line that reproduces this run (stored in the YAML for error messages)."""
    parts = ["speech-ed", "oomptimize"]
    for c in args.config:
        parts += ["--config", c]
    parts += ["--bins", args.bins, "--probe", args.probe, "--out", args.out,
              "--memory-fraction", f"{args.memory_fraction:g}"]
    if args.start_batch_size != 32:
        parts += ["--start-batch-size", str(args.start_batch_size)]
    if args.rel_gap != 0.05:
        parts += ["--rel-gap", f"{args.rel_gap:g}"]
    if args.memory_budget_gib is not None:
        parts += ["--memory-budget-gib", f"{args.memory_budget_gib:g}"]
    if args.target_gpu:
        parts += ["--target-gpu", args.target_gpu]
    if args.safety_margin is not None:
        parts += ["--safety-margin", f"{args.safety_margin:g}"]
    if args.no_ddp_copy:
        parts.append("--no-ddp-copy")
    if args.vocab_size:
        parts += ["--vocab-size", str(args.vocab_size)]
    return " ".join(shlex.quote(p) for p in parts + list(args.overrides))
