"""``speech-ed import-nemo MODEL.nemo --out model.pt [--tokenizer-out DIR]``; ``--export``: model.pt -> .nemo.

Import: reads a NeMo Canary checkpoint without NeMo, prints what it mapped and writes a speech_ed model file
(every command that takes ``--ckpt``/a model file also takes the ``.nemo`` itself). Export: writes a model file
that was imported from a ``.nemo`` (and possibly fine-tuned since) back to a ``.nemo`` that NeMo restores.
A checkpoint that cannot be mapped exactly is refused with the config key or tensor that stops it (exit 2).
"""

from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("source", help="a .nemo archive (or with --export: a model file imported from one)")
    parser.add_argument("--out", required=True, help="model file to write (with --export: the .nemo)")
    parser.add_argument("--tokenizer-out", default=None,
                        help="also write the Canary tokenizer folder (tokenizer.model + tokenizer.json)")
    parser.add_argument("--export", action="store_true", help="model file -> .nemo instead of .nemo -> model file")


def main(args) -> int:
    from speech_ed.models import count_parameters
    from speech_ed.nemo import NemoFormatError, export_nemo, import_nemo
    from speech_ed.nemo.convert import dims_summary

    try:
        if args.export:
            from speech_ed.evaluation.model_io import load_model

            model, dims, extra = load_model(args.source)
            export_nemo(model, dims, extra, args.out)
            print(f"import-nemo: wrote {args.out} ({dims_summary(dims)})")
            return 0
        imported = import_nemo(args.source, args.out, args.tokenizer_out)
    except (NemoFormatError, ValueError, FileNotFoundError) as e:
        print(f"speech-ed import-nemo: {args.source}: {e}", file=sys.stderr)
        return 2
    tok = imported.tokenizer
    layout = "aggregate" if tok.aggregate else "unified"
    print(f"import-nemo: {dims_summary(imported.dims)}; {count_parameters(imported.model):,} parameters")
    print(f"import-nemo: tokenizer {layout}, {tok.vocab_size} tokens, languages {tok.languages}, "
          f"prompt format {tok.prompt_format}")
    worst = max(imported.checked.values(), default=0.0)
    print(f"import-nemo: window, mel filters, positions and tied output match NeMo's copies (max diff {worst:.1e})")
    for note in imported.notes:
        print(f"import-nemo: note: {note}")
    print(f"import-nemo: wrote {args.out}" + (f" and {args.tokenizer_out}/" if args.tokenizer_out else ""))
    return 0
