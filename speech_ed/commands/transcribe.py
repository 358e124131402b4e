"""``speech-ed transcribe --ckpt model.pt a.wav b.flac ... [--language es] [--batch-size 16] [--mode joint]``.

Prints ``<file>\\t<text>`` per file, in the order given. A file that cannot be read (missing, corrupt, empty)
gets an ``ERROR`` line naming the problem; the other files are still transcribed. Exit status 1 if any failed.
Decoding is the one ``speech-ed evaluate`` uses (``eval.*`` defaults; docs/DECODING.md), chosen with
``--mode``, ``--beam-size`` and ``--ctc-weight``. The work is
:func:`speech_ed.evaluation.transcribe.transcribe_model_file`.
"""

from __future__ import annotations

import sys


def add_arguments(parser):
    from speech_ed.config import EvalConfig

    d = EvalConfig()
    parser.add_argument("--ckpt", required=True, help="model.pt written by `speech-ed train`")
    parser.add_argument("--language", default=None, help="source language (default: the model's first)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mode", default=d.mode, choices=["auto", "attention", "joint", "ctc"],
                        help=f"decoding mode (default {d.mode}: as `speech-ed evaluate`)")
    parser.add_argument("--beam-size", type=int, default=d.beam_size)
    parser.add_argument("--ctc-weight", type=float, default=d.ctc_weight, help="'joint' mode's CTC weight")
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ... anything libsndfile reads)")


def main(args) -> int:
    from speech_ed.evaluation.transcribe import TranscribeError, transcribe_model_file

    try:
        results = transcribe_model_file(args.ckpt, args.files, args.language, args.batch_size, args.mode,
                                        args.beam_size, args.ctc_weight)
    except TranscribeError as e:
        print(f"speech-ed transcribe: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path, text, error in results:
        if error:
            failed += 1
            print(f"{path}\tERROR: {error}")
        else:
            print(f"{path}\t{text}")
    return 1 if failed else 0
