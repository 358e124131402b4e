"""``speech-ed padding-report``: simulate one epoch of a sampler on lengths alone and report its padding.

Usage::

    speech-ed padding-report --cuts exp/ls/cuts.jsonl.gz --tokenizer exp/ls/tokenizer \\
        --strategy random 1d 2d lhotse --bins exp/ls/bucket_bins.yaml --max-duration-s 600 \\
        --json exp/ls/padding.json --plot exp/ls/padding.png [--wandb]

Strategies (:mod:`speech_ed.sampling.strategies`): ``random`` (shuffled batches under the same padding-aware
budget), ``1d`` (duration buckets), ``2d`` (duration x token buckets), ``lhotse`` (lhotse's own
DynamicBucketingSampler, for comparison).
Without ``--bins``, '1d' uses ``--num-buckets`` equal-duration buckets and '2d' estimates
``--num-buckets`` x ``--sub-buckets`` bins with ``--method``; with ``--bins``, '2d' uses them and '1d' uses
their duration groups. With one strategy the JSON is that strategy's report; with several it is
``{"meta": ..., "results": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from speech_ed.commands.estimate_bins import add_length_arguments, load_lengths
from speech_ed.sampling.bins import ESTIMATION_METHODS, BucketBins, estimate_bucket_bins
from speech_ed.sampling.io import atomic_write_text, load_bins_and_batch_sizes
from speech_ed.sampling.lengths import Lengths
from speech_ed.sampling.simulate import simulate_epoch, simulate_lhotse_dynamic_bucketing
from speech_ed.sampling.strategies import STRATEGIES


def add_arguments(parser):
    add_length_arguments(parser)
    parser.add_argument("--strategy", nargs="+", default=["2d"], choices=STRATEGIES)
    parser.add_argument("--bins", default=None, help="bucket_bins.yaml (else estimated, see --num-buckets)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--batch-sizes", default=None, help="bucket_batch_sizes.yaml (one size per bucket)")
    budget.add_argument("--max-duration-s", type=float, default=None,
                        help="padding-aware budget: batch size x longest cut <= this")
    parser.add_argument("--quadratic-duration-s", type=float, default=None,
                        help="count a cut of d seconds as d + d^2/q in the budget")
    parser.add_argument("--num-buckets", type=int, default=30, help="duration buckets (without --bins)")
    parser.add_argument("--sub-buckets", type=int, default=5, help="2D token sub-buckets (without --bins)")
    parser.add_argument("--method", default="dp", choices=ESTIMATION_METHODS,
                        help="bin estimator (without --bins)")
    parser.add_argument("--lenient", action="store_true", help="promote 2D misfits instead of dropping them")
    parser.add_argument("--world-size", type=int, default=1, help="simulated data-parallel ranks")
    parser.add_argument("--buffer-size", type=int, default=None,
                        help="cuts the sampler buffers (default: sized from the batch sizes and world size, as "
                             "training does)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--plot", default=None, help="PNG: padding per strategy, batch-size histogram")
    parser.add_argument("--wandb", action="store_true", help="log each strategy as a run in one W&B group")
    parser.add_argument("--wandb-project", default="speech_ed")
    parser.add_argument("--wandb-group", default=None, help="default: padding-report-<timestamp>")
    parser.add_argument("--wandb-dir", default=None, help="where W&B writes its runs (default: WANDB_DIR or .)")


def _bins_for(strategy: str, args, lengths: Lengths, loaded: Optional[BucketBins]) -> Optional[BucketBins]:
    if strategy == "random":
        return None
    if loaded is not None:
        return loaded if strategy == "2d" else loaded.to_1d()
    if strategy == "1d":
        return estimate_bucket_bins(lengths.durations, None, args.num_buckets, None, "equal")
    return estimate_bucket_bins(lengths.durations, lengths.tokens, args.num_buckets, args.sub_buckets,
                                args.method)


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly report: the batch-size list becomes a histogram and percentiles."""
    out = {k: v for k, v in report.items() if k != "batch_sizes"}
    sizes = np.asarray(report["batch_sizes"])
    if len(sizes):
        values, counts = np.unique(sizes, return_counts=True)
        out["batch_size_min"], out["batch_size_median"], out["batch_size_max"] = (
            int(sizes.min()), float(np.median(sizes)), int(sizes.max()))
        out["batch_size_histogram"] = {int(v): int(c) for v, c in zip(values, counts)}
    return out


def run_strategy(strategy: str, args, lengths: Lengths, bins: Optional[BucketBins],
                 batch_sizes: Optional[list[int]] = None) -> dict[str, Any]:
    if strategy == "lhotse":
        if args.max_duration_s is None:
            raise ValueError("strategy 'lhotse' needs --max-duration-s")
        report, _ = simulate_lhotse_dynamic_bucketing(lengths, args.max_duration_s, args.num_buckets,
                                                      args.quadratic_duration_s, args.seed,
                                                      args.buffer_size or 20000)
        return report
    report, _ = simulate_epoch(lengths, strategy, bins, batch_sizes, args.max_duration_s,
                               args.quadratic_duration_s, strict=not args.lenient, seed=args.seed,
                               world_size=args.world_size, buffer_size=args.buffer_size)
    if bins is not None:
        report["bins"] = {"method": bins.method, "num_buckets": bins.num_buckets,
                          "kind": "2d" if bins.is_2d else "1d"}
    return report


def print_table(reports: list[dict[str, Any]]) -> None:
    """One line per strategy; 'mean bs' is per rank, 'forced' counts steps forced partial by a small buffer."""
    print(f"{'strategy':<9}{'buckets':>8}{'batches':>9}{'steps':>7}{'forced':>7}{'mean bs':>9}{'input pad':>11}"
          f"{'output pad':>11}{'dropped':>9}{'seconds':>9}")
    for r in reports:
        print(f"{r['strategy']:<9}{r.get('num_buckets', 1):>8}{r['num_batches']:>9}{r.get('num_steps', '-'):>7}"
              f"{r.get('forced_steps', '-'):>7}{r['mean_batch_size']:>9.1f}{100 * r['input_padding']:>10.2f}%"
              f"{100 * r['output_padding']:>10.2f}%{r['cuts_dropped']:>9}{r['seconds']:>9.2f}")
        if "buffer_size" in r:
            print(f"{'':<9}world size {r.get('world_size', 1)}, buffer {r['buffer_size']} cuts "
                  f"(needed {r['needed_buffer_size']})")


def plot_reports(reports: list[dict[str, Any]], path: str) -> None:
    """Bar chart of input/output padding per strategy and the batch-size distribution of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["strategy"] for r in reports]
    x = np.arange(len(reports))
    ax1.bar(x - 0.2, [100 * r["input_padding"] for r in reports], 0.4, label="input (frames)")
    ax1.bar(x + 0.2, [100 * r["output_padding"] for r in reports], 0.4, label="output (tokens)")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("padding (%)")
    ax1.set_title("padding per strategy")
    ax1.legend()
    top = max(max(r["batch_sizes"]) for r in reports if r["batch_sizes"])
    edges = np.arange(0, top + 2) if top <= 100 else np.linspace(0, top + 1, 60)
    for r in reports:
        ax2.hist(r["batch_sizes"], bins=edges, histtype="step", label=f"{r['strategy']} ({r['num_batches']})")
    ax2.set_xlabel("batch size (cuts)")
    ax2.set_ylabel("batches")
    ax2.set_title("batch-size distribution")
    ax2.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def log_wandb(reports: list[dict[str, Any]], meta: dict[str, Any], project: str, group: Optional[str],
              wandb_dir: Optional[str] = None) -> str:
    """One W&B run per strategy in a shared group; offline when WANDB_MODE says so or there is no API key."""
    import wandb  # heavy, optional: only imported here

    from speech_ed.wandb_mode import wandb_mode

    group = group or f"padding-report-{time.strftime('%Y%m%d-%H%M%S')}"
    for r in reports:
        run = wandb.init(project=project, group=group, name=r["strategy"], job_type="padding-report",
                         config={**meta, "strategy": r["strategy"]}, mode=wandb_mode(), reinit="create_new",
                         dir=wandb_dir or os.environ.get("WANDB_DIR"))  # read now: wandb caches its setup
        summary = {k: v for k, v in summarise(r).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log({**summary, "batch_size": wandb.Histogram(r["batch_sizes"])})
        run.summary.update(summary)
        run.finish()
    return group


def main(args) -> int:
    try:
        if args.batch_sizes and ("random" in args.strategy or "lhotse" in args.strategy):
            raise ValueError("--batch-sizes needs bucketed strategies; 'random' and 'lhotse' need "
                             "--max-duration-s")
        if args.batch_sizes and not args.bins:
            raise ValueError("--batch-sizes needs the --bins they were measured on")
        bucketing = load_bins_and_batch_sizes(args.bins, args.batch_sizes)  # read and checked together, once
        lengths, provenance = load_lengths(args)
        reports = []
        for strategy in args.strategy:
            bins = _bins_for(strategy, args, lengths, bucketing.bins)
            reports.append(run_strategy(strategy, args, lengths, bins, bucketing.batch_sizes))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"padding-report: error: {e}", file=sys.stderr)
        return 2
    hours = round(float(lengths.durations.sum()) / 3600, 3)
    meta = {**provenance, "num_cuts": int(len(lengths)), "hours": hours,
            "max_duration_s": args.max_duration_s, "batch_sizes": args.batch_sizes, "bins": args.bins,
            "seed": args.seed, "world_size": args.world_size,
            "command": "speech-ed " + " ".join(sys.argv[1:])}
    print(f"padding-report: {len(lengths)} cuts ({hours} h), lengths in {provenance['lengths_seconds']} s "
          f"({'cached' if provenance['lengths_cached'] else 'measured'})")
    print_table(reports)
    if args.json:
        results = [summarise(r) for r in reports]
        data = {**results[0], "meta": meta} if len(results) == 1 else {"meta": meta, "results": results}
        atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
    if args.plot:
        plot_reports(reports, args.plot)
    if args.wandb:
        group = log_wandb(reports, meta, args.wandb_project, args.wandb_group, args.wandb_dir)
        print(f"padding-report: logged {len(reports)} runs to W&B group {group}")
    return 0
