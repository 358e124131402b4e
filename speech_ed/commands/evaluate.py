"""``speech-ed evaluate --config C.yaml [key=value ...]``: decode a split with the run's model.pt.

Writes ``<run_dir>/results.json`` and ``<run_dir>/RESULTS.md`` and prints the WER table. How it decodes is
``eval.*`` (``eval.mode``, ``eval.beam_size``, ``eval.ctc_weight`` ...; docs/DECODING.md). The work is
:func:`speech_ed.evaluation.evaluate.evaluate_split`, the recipes' evaluate stage.
"""

from __future__ import annotations

from speech_ed.config import load_config


def add_arguments(parser):
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    parser.add_argument("--model", default=None, help="model.pt (default: <run_dir>/model.pt)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.mode=joint eval.beam_size=4")


def main(args) -> int:
    from speech_ed.evaluation.evaluate import evaluate_split

    evaluate_split(load_config(args.config, args.overrides), args.model)
    return 0
