"""``speech-ed import-tsv FILE.tsv --language xx --out cuts.jsonl.gz``: audio-less cuts from metadata.

Usage::

    speech-ed import-tsv ../shared/data/librispeech/train-clean-100.tsv --language en \\
        --out exp/ls/cuts.jsonl.gz
    speech-ed import-tsv europarl_st_v1.1_test_en-de.tsv --language en --task translate \\
        --target-language de --out exp/ep/cuts_en-de.jsonl.gz

The TSV has a header and the columns ``id  duration_seconds  text  [translation]``. The cuts carry no
recording; they are enough for ``train-tokenizer``, ``estimate-bins`` and ``padding-report``.
"""

from __future__ import annotations

import sys

from speech_ed.sampling.tsv import TsvFormatError, import_tsv


def add_arguments(parser):
    parser.add_argument("tsv", help="metadata TSV: id, duration_seconds, text[, translation]")
    parser.add_argument("--language", required=True, help="source language code (supervision.language)")
    parser.add_argument("--out", required=True, help="output cut manifest (.jsonl.gz)")
    parser.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                        help="'translate' makes the translation column the decoder target")
    parser.add_argument("--target-language", default=None, help="target language (with --task translate)")


def main(args) -> int:
    try:
        summary = import_tsv(args.tsv, args.out, args.language, args.task, args.target_language)
    except (TsvFormatError, ValueError, FileNotFoundError) as e:
        print(f"import-tsv: error: {e}", file=sys.stderr)
        return 2
    print(f"import-tsv: {summary['cuts']} cuts, {summary['hours']} h -> {args.out}")
    return 0
