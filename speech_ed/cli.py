"""The ``speech-ed`` command: one sub-command per entry point.

Usage::

    speech-ed train --config recipes/espeak_multilingual/config.yaml trainer.max_steps=100
    speech-ed estimate-bins --cuts cuts.jsonl.gz --tokenizer tok.model --num-buckets 30 --out bins.yaml
    speech-ed <command> --help

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and ``main(args)``; the
module is imported only when its command runs, so ``speech-ed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "recipe": ("speech_ed.commands.recipe", "run a recipe's stages (prepare, tokenizer, train, evaluate)"),
    "train-tokenizer": ("speech_ed.commands.train_tokenizer", "train the SentencePiece tokenizer on cuts"),
    "train": ("speech_ed.commands.train", "train a model from a config"),
    "evaluate": ("speech_ed.commands.evaluate", "decode a split and write WER / RTFx results"),
    "transcribe": ("speech_ed.commands.transcribe", "transcribe audio files with a checkpoint"),
    "import-tsv": ("speech_ed.commands.import_tsv", "turn a metadata TSV into audio-less Lhotse cuts"),
    "estimate-bins": ("speech_ed.commands.estimate_bins", "estimate 1D/2D bucket bins from cuts"),
    "padding-report": ("speech_ed.commands.padding_report", "simulate an epoch of a sampler and report padding"),
    "oomptimize": ("speech_ed.commands.oomptimize", "find the largest batch size per bucket"),
    "bench-rtfx": ("speech_ed.commands.bench_rtfx", "measure inverse real-time factor of model presets"),
    "efficiency-study": ("speech_ed.commands.efficiency_study",
                         "train random / 1D / 2D+OOMptimizer batching under one memory budget and report"),
    "slurm": ("speech_ed.commands.slurm", "render (or submit) the SLURM batch script for multi-node training"),
    "fake-librispeech": ("speech_ed.corpora.fake_librispeech", "write a tiny LibriSpeech-layout corpus (espeak-ng)"),
    "wandb-workspace": ("speech_ed.commands.wandb_workspace",
                        "write the W&B padding comparison as a workspace spec (JSON), built offline"),
    "import-nemo": ("speech_ed.commands.import_nemo",
                    "import a NeMo Canary .nemo checkpoint as a model file (or --export one back)"),
    "pack-run": ("speech_ed.corpora.pack",
                 "pack part of a prepared run (FLAC, manifests, tokenizer, bins) under a size cap"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speech-ed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\nspeech-ed: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"speech-ed {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
