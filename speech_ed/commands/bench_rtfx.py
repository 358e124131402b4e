"""``speech-ed bench-rtfx``: inverse real-time factor (RTFx) of model presets, encoder and decoder apart.

Usage::

    speech-ed bench-rtfx --presets twin_24x24 twin_32x4 --batch-size 32 --device cpu --dtype bf16 \\
        --cuts /work/shared/data/librispeech/test-clean.tsv --num-utterances 128 --no-kv-cache --json out.json
    speech-ed bench-rtfx --presets canary_1b canary_1b_flash --batch-size 128 --device cuda --dtype bf16

What is timed and how (forced output lengths, longest first, a warm-up batch, the evaluation decode path) is
described in :mod:`speech_ed.evaluation.rtfx`, which does the work (:func:`~speech_ed.evaluation.rtfx.bench_presets`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser):
    parser.add_argument("--presets", nargs="+", required=True, help="names of conf/model/*.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                        help="bf16 casts the weights (inference); the log-mel frontend always runs in fp32")
    parser.add_argument("--json", default="", help="write the results here (atomically)")
    parser.add_argument("--cuts", default="",
                        help="Lhotse manifest (.jsonl[.gz]) or metadata TSV (id, duration_seconds, text)")
    parser.add_argument("--num-utterances", type=int, default=0,
                        help="seeded random subset of the manifest (0 = all; default distribution: 256)")
    parser.add_argument("--tokens-per-second", type=float, default=5.0,
                        help="reference tokens per second without --tokenizer (5 ~ 1024-piece English BPE)")
    parser.add_argument("--tokenizer", default="", help="SentencePiece model counting the reference tokens")
    parser.add_argument("--fixed-output-tokens", type=int, default=0,
                        help="force every output to this many tokens instead (e.g. 100 for the KV test)")
    parser.add_argument("--no-kv-cache", action="store_true", help="also time decoding without the KV cache")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes; the fastest is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--vocab-size", type=int, default=0,
                        help="vocab override (0 = the preset's, or 1024 where it leaves it to the tokenizer)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="ModelDims overrides applied to every preset, e.g. subsampling_channels=256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compact", action="store_true",
                        help="keep finished rows in the decoding batch (the decoder before compaction)")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                        help="on CUDA, replay the static decoder step as a CUDA graph (default on)")


def settings_from_args(args):
    """The :class:`speech_ed.evaluation.rtfx.RtfxSettings` of the parsed flags."""
    from speech_ed.evaluation.rtfx import RtfxSettings

    return RtfxSettings(
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, cuts=args.cuts,
        num_utterances=args.num_utterances, tokens_per_second=args.tokens_per_second, tokenizer=args.tokenizer,
        fixed_output_tokens=args.fixed_output_tokens, no_kv_cache=args.no_kv_cache, repeats=args.repeats,
        threads=args.threads, vocab_size=args.vocab_size, overrides=list(args.set), seed=args.seed,
        compact=not args.no_compact, cuda_graph=args.cuda_graph)


def main(args) -> int:
    from speech_ed.evaluation.rtfx import DeviceUnavailable, bench_presets

    try:
        bench_presets(args.presets, settings_from_args(args), args.json)
    except DeviceUnavailable as e:
        print(f"bench-rtfx: {e}")
        return 2
    return 0
