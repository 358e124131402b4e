"""``speech-ed estimate-bins``: 1D duration bins or 2D (duration, decoder tokens) bins for bucketing.

Usage::

    speech-ed estimate-bins --cuts exp/ls/cuts.jsonl.gz --tokenizer exp/ls/tokenizer \\
        --num-buckets 30 --sub-buckets 5 --out exp/ls/bucket_bins.yaml            # 2D, best of both methods
    speech-ed estimate-bins --cuts ... --tokenizer ... --num-buckets 30 --method equal --out bins_1d.yaml
    speech-ed estimate-bins --config C.yaml --num-buckets 30 --sub-buckets 5 --out bins.yaml [key=value ...]
                                        # over one epoch of the config's weighted training mix (data.inputs)

Both estimators run by default ('equal' = the known method, 'dp' = minimum padding); the one with less padding
is written and the comparison is printed and kept in the YAML. Without ``--max-duration-s`` padding is the
bound to each bucket's upper edge; with it, one simulated epoch of the sampler decides. The work is
:mod:`speech_ed.data.bin_estimation` (which recipes call too); token counts are cached in ``--lengths-cache``.
"""

from __future__ import annotations

import sys

from speech_ed.data.bin_estimation import (
    DEFAULT_CACHE,
    estimate_bins_for_config,
    estimate_bins_for_manifest,
)
from speech_ed.data.bin_estimation import load_lengths as _load_lengths
from speech_ed.sampling.bins import ESTIMATION_METHODS
from speech_ed.sampling.lengths import Lengths


def add_length_arguments(parser) -> None:
    """Arguments shared by estimate-bins and padding-report: manifest, tokenizer, prompt, cache."""
    parser.add_argument("--cuts", required=True, help="cut manifest (.jsonl.gz); audio-less cuts are fine")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.model")
    parser.add_argument("--pnc", action="store_true", help="count tokens of punctuated, cased targets")
    parser.add_argument("--lengths-cache", default=str(DEFAULT_CACHE),
                        help="folder for cached (duration, tokens) arrays (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the lengths cache")


def lengths_cache_dir(args) -> str | None:
    """``--lengths-cache``, or None with ``--no-cache``."""
    return None if args.no_cache else args.lengths_cache


def load_lengths(args) -> tuple[Lengths, dict]:
    """The lengths of :func:`add_length_arguments`' manifest (see :func:`speech_ed.data.bin_estimation.load_lengths`)."""
    return _load_lengths(args.cuts, args.tokenizer, args.pnc, lengths_cache_dir(args))


def add_arguments(parser):
    add_length_arguments(parser)
    for action in parser._actions:  # with --config, the manifest and tokenizer come from the config
        if action.dest in ("cuts", "tokenizer"):
            action.required = False
    parser.add_argument("--config", default=None,
                        help="estimate over one epoch of this config's training mix (data.inputs, weights, skips)")
    parser.add_argument("overrides", nargs="*", default=[], help="key=value config overrides (with --config)")
    parser.add_argument("--num-buckets", type=int, required=True, help="duration buckets")
    parser.add_argument("--sub-buckets", type=int, default=None,
                        help="token sub-buckets per duration bucket (gives 2D bins)")
    parser.add_argument("--method", default="both", choices=[*ESTIMATION_METHODS, "both"],
                        help="'equal' (known method), 'dp' (minimum padding) or 'both' (keep the better)")
    parser.add_argument("--tps-sigmas", type=float, default=4.0,
                        help="2D: tokens-per-second outliers above mean + this many std are dropped")
    parser.add_argument("--max-duration-s", type=float, default=None,
                        help="score methods by a simulated epoch under this padding-aware budget")
    parser.add_argument("--out", required=True, help="bucket_bins.yaml to write")


def main(args) -> int:
    try:
        if args.config is None and (args.cuts is None or args.tokenizer is None):
            raise ValueError("give --cuts and --tokenizer, or --config")
        if args.overrides and args.config is None:
            raise ValueError(f"key=value overrides {args.overrides} need --config")
        if args.config:
            from speech_ed.config import load_config

            estimate_bins_for_config(load_config([args.config], args.overrides), args.out, args.num_buckets,
                                     args.sub_buckets, args.method, args.tps_sigmas, args.max_duration_s,
                                     tokenizer_path=args.tokenizer)
        else:
            estimate_bins_for_manifest(args.cuts, args.tokenizer, args.out, args.num_buckets, args.sub_buckets,
                                       args.method, args.tps_sigmas, args.max_duration_s, args.pnc,
                                       lengths_cache_dir(args))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"estimate-bins: error: {e}", file=sys.stderr)
        return 2
    return 0
