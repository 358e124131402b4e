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
``--memory-fraction`` (0.75, then 0.6) or a ``--safety-margin``. The work is
:func:`speech_ed.oomptimizer.runner.oomptimize_for_config`, which a recipe's batch-size stage calls too.
"""

from __future__ import annotations

import sys

from speech_ed.config import load_config
from speech_ed.oomptimizer.runner import SIMULATE_DEFAULT_MARGIN, BatchSizeError, oomptimize_command


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


def main(args) -> int:
    from speech_ed.oomptimizer.runner import oomptimize_for_config

    cfg = load_config(args.config, args.overrides)
    command = oomptimize_command(args.config, args.overrides, args.bins, args.probe, args.out, args.memory_fraction,
                                 args.start_batch_size, args.rel_gap, args.memory_budget_gib, args.target_gpu,
                                 args.safety_margin, not args.no_ddp_copy, args.vocab_size)
    try:
        oomptimize_for_config(cfg, args.bins, args.probe, args.out, args.memory_budget_gib, args.memory_fraction,
                              args.target_gpu, args.safety_margin, args.start_batch_size, args.rel_gap,
                              args.max_batch_size, not args.no_ddp_copy, args.vocab_size, command,
                              log=lambda line: print(line, flush=True))
    except BatchSizeError as e:
        print(f"oomptimize: {e}", file=sys.stderr)
        return 1
    return 0
