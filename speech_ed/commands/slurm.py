"""``speech-ed slurm``: render the SLURM batch script for multi-node training; print, write or submit it.

Usage::

    speech-ed slurm --config recipes/librispeech/config.yaml --nodes 2 --gpus-per-node 8 --time 48:00:00 \\
        --partition gpu run=ls960 > train.sbatch          # print (make slurm RECIPE=librispeech NODES=2 ...)
    speech-ed slurm --config recipes/librispeech/config.yaml --nodes 4 --submit          # write + sbatch

The template is ``recipes/slurm/train.sbatch``: ``{{name}}`` placeholders, nothing else. The config and the
``key=value`` overrides are validated first, so a typo fails on the login node rather than in the queue.
With ``--submit`` the script is written to ``<run_dir>/slurm/train.sbatch`` (SLURM's log folder is created
next to it) and handed to ``sbatch``. The work is :mod:`speech_ed.slurm`.
"""

from __future__ import annotations

import sys

from speech_ed.config import ConfigError
from speech_ed.slurm import render_sbatch, submit_sbatch, write_sbatch


def add_arguments(parser) -> None:
    parser.add_argument("--config", action="append", required=True, help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for training")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8, help="also the tasks per node")
    parser.add_argument("--time", default="24:00:00", help="SLURM time limit per job (requeue continues)")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default: data.num_workers + 2")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--out", default=None, help="write the script here instead of printing it")
    parser.add_argument("--submit", action="store_true",
                        help="write <run_dir>/slurm/train.sbatch and sbatch it")


def main(args) -> int:
    try:
        script, run_dir = render_sbatch(args.config, args.overrides, args.nodes, args.gpus_per_node,
                                        args.time, args.cpus_per_task, args.partition, args.account)
    except (ConfigError, ValueError, KeyError) as e:
        print(f"slurm: error: {e}", file=sys.stderr)
        return 2
    if not args.out and not args.submit:
        print(script, end="")
        return 0
    out = write_sbatch(script, run_dir, args.out)
    print(f"slurm: wrote {out}")
    if not args.submit:
        return 0
    try:
        return submit_sbatch(out)
    except FileNotFoundError as e:
        print(f"slurm: error: {e}", file=sys.stderr)
        return 2
