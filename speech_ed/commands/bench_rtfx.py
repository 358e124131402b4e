"""``speech-ed bench-rtfx``: inverse real-time factor (RTFx) of model presets, encoder and decoder apart.

Usage::

    speech-ed bench-rtfx --presets twin_24x24 twin_32x4 --batch-size 32 --device cpu --dtype bf16 \\
        --cuts /work/shared/data/librispeech/test-clean.tsv --num-utterances 128 --no-kv-cache --json out.json
    speech-ed bench-rtfx --presets canary_1b canary_1b_flash --batch-size 128 --device cuda --dtype bf16

Randomly initialised models are compared fairly by forcing each utterance's output length to its reference
token count (the decoder still runs step by step on the KV cache, EOS ignored). As on the Open ASR
Leaderboard, utterances are sorted by length (longest first) and a warm-up pass over the first batch runs
before timing.
RTFx = audio seconds / (encoder + decoder seconds); encoder time includes the frontend and the copy to the
device, decoder time includes the cross-attention key/value projection and the prompt step. ``--no-kv-cache``
adds a pass that recomputes the whole prefix (self- and cross-attention keys/values) at every step.

Lengths and token counts come from ``--cuts`` (a Lhotse manifest, audio-less allowed, or a TSV with a
``duration_seconds`` column and optional ``text``); otherwise from a seeded LibriSpeech-like log-normal (the
test-clean fit: log-duration mean 1.80, std 0.63, clipped to 1.3-35 s). Token counts are the tokenizer's count
of the text with ``--tokenizer``, else ``round(--tokens-per-second x duration)``, capped so prompt + output
fits the decoder's positions. Audio is the cut's recording when it has one, otherwise seeded noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT_LEN = 5  # Canary-1B's decoder context: <|startoftranscript|> <src> <task> <tgt> <pnc>


@dataclass
class Utterance:
    duration_s: float
    num_tokens: int
    cut: object = None  # a lhotse Cut with a recording, or None (noise)


def add_arguments(parser):
    parser.add_argument("--presets", nargs="+", required=True, help="names of conf/model/*.yaml")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"],
                        help="bf16 casts the weights (inference); the log-mel frontend always runs in fp32")
    parser.add_argument("--json", default="", help="write the results here (atomically)")
    parser.add_argument("--cuts", default="",
                        help="Lhotse manifest (.jsonl[.gz]) or TSV with a duration_seconds column")
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


def load_utterances(args) -> list[Utterance]:
    """The utterances to decode, with their output lengths (not yet sorted)."""
    g = torch.Generator().manual_seed(args.seed)
    texts: list[str | None]
    cuts = []
    if not args.cuts:
        n = args.num_utterances or 256
        durations = torch.exp(1.80 + 0.63 * torch.randn(n, generator=g)).clamp(1.3, 35.0).tolist()
        texts = [None] * n
    elif args.cuts.endswith(".tsv"):
        durations, texts = [], []
        with open(args.cuts, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            if "duration_seconds" not in header:
                raise ValueError(f"{args.cuts}:1: no 'duration_seconds' column in header {header}")
            di, ti = header.index("duration_seconds"), header.index("text") if "text" in header else None
            for lineno, line in enumerate(f, start=2):
                cols = line.rstrip("\n").split("\t")
                try:
                    durations.append(float(cols[di]))
                except (ValueError, IndexError):
                    raise ValueError(f"{args.cuts}:{lineno}: bad duration_seconds {cols!r}") from None
                texts.append(cols[ti] if ti is not None and ti < len(cols) else None)
    else:
        from lhotse import CutSet

        cuts = list(CutSet.from_file(args.cuts))
        durations = [c.duration for c in cuts]
        texts = [" ".join(s.text or "" for s in c.supervisions) or None for c in cuts]
    index = list(range(len(durations)))
    if args.cuts and args.num_utterances and args.num_utterances < len(index):
        index = sorted(torch.randperm(len(index), generator=g)[: args.num_utterances].tolist())
    sp = None
    if args.tokenizer:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=args.tokenizer)
    utts = []
    for i in index:
        if args.fixed_output_tokens:
            n_tok = args.fixed_output_tokens
        elif sp is not None and texts[i]:
            n_tok = len(sp.encode(texts[i]))
        else:
            n_tok = round(args.tokens_per_second * durations[i])
        cut = cuts[i] if cuts and cuts[i].has_recording else None
        utts.append(Utterance(durations[i], max(1, n_tok), cut))
    return utts


def make_batches(utts: list[Utterance], batch_size: int) -> list[list[Utterance]]:
    """Longest first, then consecutive groups of batch_size (the last one may be smaller)."""
    ordered = sorted(utts, key=lambda u: u.duration_s, reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def batch_audio(batch: list[Utterance], sample_rate: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) float32 zero-padded audio and (B,) int64 lengths, on the CPU."""
    lens = torch.tensor([round(u.duration_s * sample_rate) for u in batch])
    audio = torch.zeros(len(batch), int(lens.max()))
    g = torch.Generator().manual_seed(seed)
    for i, u in enumerate(batch):
        if u.cut is not None:
            samples = torch.from_numpy(u.cut.load_audio()).float().mean(0)
            lens[i] = min(int(lens[i]), samples.shape[0])
            audio[i, : lens[i]] = samples[: lens[i]]
        else:
            audio[i, : lens[i]] = 0.05 * torch.randn(int(lens[i]), generator=g)
    return audio, lens


def run_pass(model, batches, args, use_cache: bool, max_tokens: int) -> dict:
    """Encode and decode every batch once (the evaluation decode path); returns summed seconds and tokens."""
    from speech_ed.evaluation.decoding import decode_audio
    from speech_ed.models.decoding import DecodeOptions

    options = DecodeOptions(mode="attention", use_cache=use_cache, compact=not args.no_compact,
                            cuda_graph=args.cuda_graph)
    enc_s = dec_s = 0.0
    tokens = 0
    for bi, batch in enumerate(batches):
        audio, lens = batch_audio(batch, model.dims.sample_rate, args.seed + bi)
        force = torch.tensor([min(u.num_tokens, max_tokens) for u in batch])
        prompt = torch.full((len(batch), PROMPT_LEN), 1, dtype=torch.long)
        out = decode_audio(model, audio.to(args.device), lens.to(args.device), prompt.to(args.device), eos_id=2,
                           blank_id=0, options=options, with_ctc=False, force_lengths=force.to(args.device),
                           timed=True)
        enc_s, dec_s = enc_s + out.encoder_seconds, dec_s + out.decoder_seconds
        tokens += sum(len(h) for h in out.hyps)
    return {"encoder_seconds": enc_s, "decoder_seconds": dec_s, "output_tokens": tokens}


def apply_overrides(dims, overrides: list[str]):
    """Return dims with ``field=value`` strings applied (values parsed as the field's current type)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(dims)}
    changes = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of the ModelDims fields")
        current = getattr(dims, key)
        if isinstance(current, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = type(current)(value)
    return dataclasses.replace(dims, **changes)


def bench_preset(name: str, batches, args) -> dict:
    from speech_ed.config import load_model_preset
    from speech_ed.models import AEDModel, count_parameters

    dims = apply_overrides(load_model_preset(name), args.set)
    if args.vocab_size > 0 or dims.vocab_size <= 0:
        dims.vocab_size = args.vocab_size if args.vocab_size > 0 else 1024
    torch.manual_seed(args.seed)
    model = AEDModel(dims).eval()
    params = count_parameters(model)
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(args.device)
    max_tokens = dims.max_decoder_positions - PROMPT_LEN
    capped = sum(u.num_tokens > max_tokens for b in batches for u in b)
    audio_s = sum(u.duration_s for b in batches for u in b)
    with torch.inference_mode():
        run_pass(model, batches[:1], args, True, max_tokens)  # warm-up
        best = min((run_pass(model, batches, args, True, max_tokens) for _ in range(args.repeats)),
                   key=lambda r: r["encoder_seconds"] + r["decoder_seconds"])
        total = best["encoder_seconds"] + best["decoder_seconds"]
        result = {"preset": name, "params": params, "rtfx": audio_s / total, **best, "total_seconds": total,
                  "audio_seconds": audio_s, "utterances": sum(len(b) for b in batches),
                  "outputs_capped": capped, "decoder_layers": dims.num_decoder_layers,
                  "encoder_layers": dims.num_encoder_layers,
                  "vocab_size": dims.vocab_size}
        if args.no_kv_cache:
            run_pass(model, batches[:1], args, False, max_tokens)
            nc = min((run_pass(model, batches, args, False, max_tokens) for _ in range(args.repeats)),
                     key=lambda r: r["decoder_seconds"])
            result["decoder_seconds_no_cache"] = nc["decoder_seconds"]
            result["rtfx_no_cache"] = audio_s / (best["encoder_seconds"] + nc["decoder_seconds"])
            result["kv_cache_speedup"] = nc["decoder_seconds"] / best["decoder_seconds"]
    if capped:
        print(f"[bench-rtfx] {name}: {capped} utterances had more reference tokens than the decoder's "
              f"{max_tokens} positions allow; their outputs were capped at {max_tokens}")
    return result


def format_table(results: list[dict]) -> str:
    cols = ["preset", "params", "rtfx", "encoder_seconds", "decoder_seconds", "output_tokens"]
    if any("kv_cache_speedup" in r for r in results):
        cols += ["decoder_seconds_no_cache", "rtfx_no_cache", "kv_cache_speedup"]
    rows = [cols] + [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    if isinstance(v, int) and v > 100_000:
        return f"{v / 1e6:.1f}M"
    return "-" if v is None else str(v)


def main(args) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-rtfx: --device cuda but CUDA is not available")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    utts = load_utterances(args)
    batches = make_batches(utts, args.batch_size)
    print(f"[bench-rtfx] {len(utts)} utterances, {sum(u.duration_s for u in utts) / 3600:.2f} h, "
          f"{sum(u.num_tokens for u in utts)} reference tokens, {len(batches)} batches of "
          f"<= {args.batch_size}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}")
    results = []
    for name in args.presets:
        results.append(bench_preset(name, batches, args))
        print(format_table(results[-1:]), flush=True)
    print("\n" + format_table(results))
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            print(f"RTFx {r['preset']} / {base['preset']} = {r['rtfx'] / base['rtfx']:.2f}x")
    if args.json:
        out = {"results": results, "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
               "cuts": args.cuts or "default LibriSpeech-like", "num_utterances": len(utts),
               "tokens_per_second": args.tokens_per_second, "fixed_output_tokens": args.fixed_output_tokens,
               "overrides": list(args.set), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": platform.platform(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, path)
        print(f"[bench-rtfx] wrote {path}")
    return 0
