"""OOMptimizer mean batch size in the paper's setting, planned on a CPU with the simulate probe.

Canary-1B-class model (default preset ``canary_1b``: 24 + 24 layers, width 1024, V = 5248), bf16-mixed,
AdamW, second model copy resident, traced with fake tensors for an 80 GB GPU (``--target-gpu h100-80gb``,
memory fraction 0.9). Data: LibriSpeech train-clean-100, decoder tokens (prompt + text + end) counted with a
1024-piece SentencePiece tokenizer (Canary's per-language tokenizers have 1024 pieces).

Usage::

    nice -n 19 flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_oomptimizer_gpu_sim.py \\
        --out exp/bench_oomptimizer_gpu_sim [--preset canary_1b] [--target-gpu h100-80gb] \\
        [--duration-buckets 20 --sub-buckets 2] [--quadratic 15 30]

One simulate trace of a 1B model takes 4-20 s on a CPU whatever the batch size, so the search is guided by a
memory model instead of starting blind: stages 1-4 are ``bench_oomptimizer_common.study`` (pilot, calibration,
every bucket traced, the epoch against padding-aware ``max_duration_s`` budgets on 30 equal-duration 1D
buckets with and without a quadratic penalty ``d + d^2/q``, and no bucketing). A verdict is the simulate
probe's for a GPU target: the allocator model, started from the state after set-up, never reserves past the
limit (``bench_oomptimizer_common.simulate_judge``). Stage 5, context: the original Canary-1B recipe (360 s,
q = 15, 20 1D buckets); predicted-only sizes for finer 2D bins (30x5, 20x7), marked as predicted.

No safety margin is applied to either side (both are judged by the same traces). Prints tables and writes
``<out>/bench_oomptimizer_gpu_sim.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_oomptimizer_common import GiB, epoch, epoch_table, log, simulate_judge, study  # noqa: E402

from speech_ed.config import load_model_preset  # noqa: E402
from speech_ed.data.prompt import PROMPT_LEN  # noqa: E402
from speech_ed.data.text import normalize_text  # noqa: E402
from speech_ed.data.tokenizer import Tokenizer  # noqa: E402
from speech_ed.oomptimizer import GPU_MEMORY_GIB, StepSettings, bins_as_pairs, make_probe  # noqa: E402
from speech_ed.sampling import Lengths, estimate_bucket_bins, iter_tsv_rows  # noqa: E402
from speech_ed.sampling.io import atomic_write_text  # noqa: E402

TSV = ROOT.parent / "shared" / "data" / "librispeech" / "train-clean-100.tsv"


def load_lengths(out: Path, tok_dir: Path, vocab: int) -> Lengths:
    """Durations and decoder tokens (prompt + text + end) of train-clean-100, ``vocab``-piece tokenizer."""
    cache = out / f"lengths_v{vocab}.npz"
    if cache.is_file():
        return Lengths.load(cache)
    rows = list(iter_tsv_rows(TSV))
    texts = [normalize_text(r["text"]) for r in rows]
    tok = Tokenizer.load(tok_dir) if (tok_dir / "tokenizer.model").is_file() else \
        Tokenizer.train(texts, tok_dir, vocab_size=vocab, languages=["en"])
    tokens = np.array([PROMPT_LEN + len(p) + 1 for p in tok.encode_batch(texts)], dtype=np.int64)
    durations = np.array([float(r["duration_seconds"]) for r in rows])
    lengths = Lengths(np.array([r["id"] for r in rows]), durations, tokens)
    lengths.save(cache)
    return lengths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp/bench_oomptimizer_gpu_sim")
    ap.add_argument("--preset", default="canary_1b")
    ap.add_argument("--vocab-size", type=int, default=None, help="logit size (default: the preset's)")
    ap.add_argument("--tokenizer-vocab", type=int, default=1024, help="pieces of the token counter")
    ap.add_argument("--tokenizer-dir", default="exp/bench_padding/tokenizer_1024")
    ap.add_argument("--target-gpu", default="h100-80gb", choices=sorted(GPU_MEMORY_GIB))
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--duration-buckets", type=int, default=20)
    ap.add_argument("--sub-buckets", type=int, default=2)
    ap.add_argument("--rel-gap", type=float, default=0.05)
    ap.add_argument("--quadratic", type=float, nargs="*", default=[15.0, 30.0])
    ap.add_argument("--predict-bins", nargs="*", default=["30x2", "30x5", "20x7"],
                    help="finer 2D bins whose sizes are only predicted by the memory model")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    torch.manual_seed(0)

    lengths = load_lengths(out, ROOT / args.tokenizer_dir, args.tokenizer_vocab)
    dims = load_model_preset(args.preset)
    if args.vocab_size:
        dims = replace(dims, vocab_size=args.vocab_size)
    settings = StepSettings(precision=args.precision, ctc_weight=0.3 if dims.ctc_head else 0.0)
    probe = make_probe("simulate", dims, settings, memory_fraction=args.memory_fraction,
                       target_gpu=args.target_gpu)
    limit = probe.limit_bytes
    judge = simulate_judge(probe)
    bins = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=args.duration_buckets,
                                num_subbuckets=args.sub_buckets, method="dp")
    pairs = bins_as_pairs(bins)
    log(f"{len(lengths)} utterances (max {lengths.durations.max():.2f} s, {lengths.tokens.max()} tokens), "
        f"{args.preset} V={dims.vocab_size}, {probe.device_name}, limit {limit / GiB:.2f} GiB, "
        f"{len(pairs)} buckets")

    # 1-4. Pilot, calibration, every bucket traced, the epoch against the largest safe single budgets.
    bins_1d = estimate_bucket_bins(lengths.durations, num_buckets=30, method="equal")
    specs = [(None, "1d", bins_1d, q) for q in [None, *args.quadratic]] + [(None, "random", None, None)]
    res = study(lengths, bins, judge, specs, args.rel_gap)
    buckets, model_all, ours, baselines = res["buckets"], res["model"], res["ours"], res["baselines"]
    for bl in baselines:
        bl.pop("label")

    # 5. Context: the original recipe and predicted-only finer bins.
    bins_20 = estimate_bucket_bins(lengths.durations, num_buckets=20, method="equal")
    rep_o, shapes_o = epoch(lengths, "1d", bins_20, max_duration_s=360.0, q=15.0)
    pred_o = model_all.predict(*shapes_o.T)
    i = int(np.argmax(pred_o))
    worst_o = judge.measure(int(shapes_o[i, 0]), float(shapes_o[i, 1]), int(shapes_o[i, 2]), "context")
    original = {"mean_batch_size": rep_o["cuts_yielded"] / rep_o["batches"], "batches": rep_o["batches"],
                "worst_batch": [int(shapes_o[i, 0]), float(shapes_o[i, 1]), int(shapes_o[i, 2])],
                "worst_batch_traced_gib": round(worst_o / GiB, 3)}
    predicted_rows = []
    for spec in args.predict_bins:
        nd, ns = (int(x) for x in spec.split("x"))
        fb = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=nd, num_subbuckets=ns,
                                  method="dp")
        fs = [max(1, math.floor(model_all.max_batch(d, u, limit))) for d, u in bins_as_pairs(fb)]
        r, _ = epoch(lengths, "2d", fb, sizes=fs)
        predicted_rows.append({"bins": spec, "buckets": len(fs),
                               "mean_batch_size": r["cuts_yielded"] / r["batches"], "batches": r["batches"]})

    # Report.
    log("\nfound sizes (bucket: max s, max tokens -> B, B x max s)")
    for r in buckets:
        log(f"  {r['bucket']:3d}: {r['max_duration_s']:5.2f} s {r['max_tokens']:3d} tok -> "
            f"B={r['batch_size']:4d} "
            f"(peak {r['peak_gib']} GiB; fails at {r['smallest_failure']}), B x s = "
            f"{r['batch_size'] * r['max_duration_s']:.0f}")
    log(f"\nepoch of train-clean-100 (seed 0), {args.preset}, {probe.device_name}, "
        f"limit {limit / GiB:.2f} GiB")
    epoch_table(f"2D {args.duration_buckets}x{args.sub_buckets} + OOMptimizer (traced)", ours, baselines)
    original["ratio_ours_over_this"] = ours["mean_batch_size"] / original["mean_batch_size"]
    log(f"\ncontext: original Canary-1B recipe (1D x20, 360 s, quadratic 15): {original['batches']} batches, "
        f"mean batch size {original['mean_batch_size']:.2f}, "
        f"ours / this {original['ratio_ours_over_this']:.2f}; "
        f"its worst batch {original['worst_batch']} traced at {original['worst_batch_traced_gib']} GiB")
    for r in predicted_rows:
        log(f"context (predicted by the memory model, not traced): 2D {r['bins']} ({r['buckets']} buckets): "
            f"mean batch size {r['mean_batch_size']:.2f} ({r['batches']} batches)")
    total_s = time.perf_counter() - t_all
    log(f"\n{len(judge.traces)} traces, {sum(t['seconds'] for t in judge.traces):.0f} s tracing; "
        f"total {total_s:.0f} s")

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": str(torch.__version__), "preset": args.preset, "vocab_size": dims.vocab_size,
        "tokenizer_vocab": args.tokenizer_vocab, "device": probe.device_name,
        "limit_gib": round(limit / GiB, 3), "precision": args.precision, "bins": pairs,
        "memory_model": {"calibration": res["calibration"], "held_out": res["held_out"],
                         "refit": res["refit"]},
        "buckets": buckets, "epoch": {"oomptimizer": ours, "baselines": baselines,
                                      "original_recipe": original, "predicted_only": predicted_rows},
        "traces": judge.traces, "total_seconds": round(total_s, 1),
    }
    atomic_write_text(out / "bench_oomptimizer_gpu_sim.json", json.dumps(report, indent=1, default=float))
    log(f"wrote {out / 'bench_oomptimizer_gpu_sim.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
