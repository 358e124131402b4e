"""OOMptimizer mean batch size in the paper's setting, planned on a CPU with the simulate probe.

Canary-1B-class model (default preset ``canary_1b``: 24 + 24 layers, width 1024, V = 5248), bf16-mixed,
AdamW, second model copy resident, traced with fake tensors for an 80 GB GPU (``--target-gpu h100-80gb``,
memory fraction 0.9). Data: LibriSpeech train-clean-100, decoder tokens (prompt + text + end) counted with a
1024-piece SentencePiece tokenizer (Canary's per-language tokenizers have 1024 pieces).

Usage::

    nice -n 19 flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_oomptimizer_gpu_sim.py \\
        --out exp/bench_oomptimizer_gpu_sim [--preset canary_1b] [--target-gpu h100-80gb] \\
        [--duration-buckets 20 --sub-buckets 2] [--quadratic 15 30]

One simulate trace of a 1B model takes about 4 s on a CPU whatever the batch size, so the search is guided by a
memory model instead of starting blind (what is traced and what is predicted):

  1. Pilot: 2 traces (longest bucket, B = 8 and 16) for a rough cost per second of audio.
  2. Calibration: 6 durations x (low, high) token counts x 2 batch sizes (about 50 % and 90 % of the limit),
     24 traces; ``peak = k0 + n (a0 + a1 L + a2 L^2 + a3 U + a4 U L + a5 U^2)`` fitted on them.
  3. Every bucket of the 2D bins, traced: the model's largest size (x 0.99) is the first trial, then the
     search steps by the relative gap (5 %) until a traced success and a traced failure are at most 5 % apart
     (the same stop rule as ``find_max_batch_size``). The answer is a size whose trace fitted. These traces
     are held out of the fit: the model's error on them is printed.
  4. One epoch (seed 0, 2D lenient) with the found sizes against padding-aware ``max_duration_s`` budgets
     (``n x longest <= D``, optional quadratic penalty ``d + d^2/q``) on 30 equal-duration 1D buckets, and no
     bucketing. For each baseline, the largest D whose every batch fits is found with the model refitted on
     all traces, then the 3 batches it ranks worst are traced (D lowered 2 % until they fit), and the worst
     batch of a 5 % larger D is traced to show it does not fit.
  5. Context: the original Canary-1B recipe (360 s, q = 15, 20 1D buckets); predicted-only sizes for finer
     2D bins (30x5, 20x7), marked as predicted.

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

from bench_oomptimizer import TSV, MemoryModel, epoch, epoch_table, largest_safe_budget  # noqa: E402

from speech_ed.config import load_model_preset  # noqa: E402
from speech_ed.data.prompt import PROMPT_LEN  # noqa: E402
from speech_ed.data.text import normalize_text  # noqa: E402
from speech_ed.data.tokenizer import Tokenizer  # noqa: E402
from speech_ed.oomptimizer import GPU_MEMORY_GIB, StepSettings, bins_as_pairs, make_probe  # noqa: E402
from speech_ed.sampling import Lengths, estimate_bucket_bins, iter_tsv_rows  # noqa: E402
from speech_ed.sampling.io import atomic_write_text  # noqa: E402

GiB = 1 << 30


def log(msg: str) -> None:
    print(msg, flush=True)


def load_lengths(out: Path, tok_dir: Path, vocab: int) -> Lengths:
    """Durations and decoder tokens (prompt + text + end) of train-clean-100 with a ``vocab``-piece tokenizer."""
    cache = out / f"lengths_v{vocab}.npz"
    if cache.is_file():
        return Lengths.load(cache)
    rows = list(iter_tsv_rows(TSV))
    texts = [normalize_text(r["text"]) for r in rows]
    tok = Tokenizer.load(tok_dir) if (tok_dir / "tokenizer.model").is_file() else \
        Tokenizer.train(texts, tok_dir, vocab_size=vocab, languages=["en"])
    tokens = np.array([PROMPT_LEN + len(p) + 1 for p in tok.encode_batch(texts)], dtype=np.int64)
    lengths = Lengths(np.array([r["id"] for r in rows]), np.array([float(r["duration_seconds"]) for r in rows]),
                      tokens)
    lengths.save(cache)
    return lengths


class Traced:
    """The simulate probe, with every trace recorded (and ``measure`` for bench_oomptimizer's helpers)."""

    def __init__(self, probe):
        self.probe = probe
        self.traces: list[dict] = []

    def measure(self, n: int, d: float, u: int, stage: str = "baseline") -> int:
        t0 = time.perf_counter()
        peak = self.probe.peak_bytes(int(n), float(d), int(u))
        self.traces.append({"stage": stage, "n": int(n), "max_duration_s": float(d), "max_tokens": int(u),
                            "peak_gib": round(peak / GiB, 4), "seconds": round(time.perf_counter() - t0, 2)})
        return peak


def predicted_max_n(model: MemoryModel, d: float, u: int, limit: int) -> float:
    c0 = float(model.predict(0, d, u))
    per = float(model.predict(1, d, u)) - c0
    return (limit - c0) / per


def guided_search(fits, n0: int, rel_gap: float) -> tuple[int, int]:
    """Largest fitting size from a predicted start; stops when success and failure are within ``rel_gap``."""
    lo, hi = 0, None
    n = max(1, n0)
    while True:
        if fits(n):
            lo = n
        else:
            hi = n
        if hi is not None and lo > 0 and (hi - lo <= 1 or (hi - lo) / hi <= rel_gap):
            return lo, hi
        if hi is None:
            n = max(lo + 1, math.floor(lo / (1 - rel_gap)))
        elif lo == 0:
            if hi == 1:
                return 0, 1
            n = min(hi - 1, math.ceil(hi * (1 - rel_gap)))
        else:
            n = (lo + hi) // 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp/bench_oomptimizer_gpu_sim")
    ap.add_argument("--preset", default="canary_1b")
    ap.add_argument("--vocab-size", type=int, default=None, help="logit size (default: the preset's)")
    ap.add_argument("--tokenizer-vocab", type=int, default=1024, help="pieces of the token-counting tokenizer")
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
    sim = Traced(probe)
    bins = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=args.duration_buckets,
                                num_subbuckets=args.sub_buckets, method="dp")
    pairs = bins_as_pairs(bins)
    log(f"{len(lengths)} utterances (max {lengths.durations.max():.2f} s, {lengths.tokens.max()} tokens), "
        f"{args.preset} V={dims.vocab_size}, {probe.device_name}, limit {limit / GiB:.2f} GiB, "
        f"{len(pairs)} buckets")

    # 1. Pilot.
    d_max, u_max = pairs[-1]
    p8, p16 = sim.measure(8, d_max, u_max, "pilot"), sim.measure(16, d_max, u_max, "pilot")
    per_s = (p16 - p8) / 8 / d_max
    k = p8 - 8 * per_s * d_max
    log(f"pilot: {d_max} s x {u_max} tok: B=8 {p8 / GiB:.2f} GiB, B=16 {p16 / GiB:.2f} GiB "
        f"({per_s * 1000 / GiB:.1f} MiB per padded second)")

    # 2. Calibration.
    calib = []
    for d in np.quantile(lengths.durations, [0.0, 0.1, 0.4, 0.7, 0.95, 1.0]):
        near = lengths.tokens[np.abs(lengths.durations - d) <= max(0.5, 0.05 * d)]
        for u in (int(np.quantile(near, 0.05)), int(near.max())):
            for frac in (0.5, 0.9):
                n = max(1, int((limit - k) * frac / (per_s * d)))
                calib.append((n, float(d), u, sim.measure(n, float(d), u, "calibration")))
    model = MemoryModel(calib)
    log(f"memory model on {model.num_points} calibration traces: mean/max error "
        f"{model.mean_rel_error:.2%} / {model.max_rel_error:.2%}")

    # 3. Every bucket, traced.
    buckets = []
    t0 = time.perf_counter()
    for b in sorted(range(len(pairs)), key=lambda i: pairs[i], reverse=True):
        d, u = pairs[b]
        n_pred = predicted_max_n(model, d, u, limit)
        trials = []

        def fits(n, d=d, u=u, trials=trials):
            peak = sim.measure(n, d, u, "bucket")
            trials.append((n, round(peak / GiB, 4), float(model.predict(n, d, u)) / peak - 1))
            return peak <= limit

        lo, hi = guided_search(fits, math.floor(0.99 * n_pred), args.rel_gap)
        peak_lo = next(p for n, p, _ in reversed(trials) if n == lo) if lo else None
        buckets.append({"bucket": b, "max_duration_s": d, "max_tokens": u, "predicted_max": round(n_pred, 1),
                        "batch_size": lo, "smallest_failure": hi, "peak_gib": peak_lo,
                        "trials": [[n, p, round(e, 4)] for n, p, e in trials]})
        log(f"bucket {b:3d} ({d:5.2f} s, {u:3d} tok): predicted {n_pred:6.1f}, found {lo:4d} "
            f"(fails at {hi}), peak {peak_lo} GiB, {len(trials)} traces")
    search_s = time.perf_counter() - t0
    buckets.sort(key=lambda r: r["bucket"])
    sizes = [r["batch_size"] for r in buckets]
    held_out = np.array([abs(e) for r in buckets for *_, e in r["trials"]])
    log(f"search: {search_s:.0f} s, {len(held_out)} traces; model error on them (held out): mean "
        f"{held_out.mean():.2%}, max {held_out.max():.2%}")

    # 4. Epoch: ours vs the largest safe single budgets.
    all_points = calib + [(n, r["max_duration_s"], r["max_tokens"], p * GiB)
                          for r in buckets for n, p, _ in r["trials"]]
    model_all = MemoryModel(all_points)
    log(f"memory model refitted on {model_all.num_points} traces: mean/max error "
        f"{model_all.mean_rel_error:.2%} / {model_all.max_rel_error:.2%}")
    rep, shapes = epoch(lengths, "2d", bins, sizes=sizes)
    ours = {"mean_batch_size": rep["cuts_yielded"] / rep["batches"], "batches": rep["batches"],
            "cuts": rep["cuts_yielded"],
            "max_predicted_gib": round(float(model_all.predict(*shapes.T).max()) / GiB, 3)}
    bins_1d = estimate_bucket_bins(lengths.durations, num_buckets=30, method="equal")
    baselines = [largest_safe_budget(lengths, "1d", bins_1d, q, model_all, limit, sim)
                 for q in [None, *args.quadratic]]
    baselines.append(largest_safe_budget(lengths, "random", None, None, model_all, limit, sim))

    # 5. Context: the original recipe and predicted-only finer bins.
    bins_20 = estimate_bucket_bins(lengths.durations, num_buckets=20, method="equal")
    rep_o, shapes_o = epoch(lengths, "1d", bins_20, max_duration_s=360.0, q=15.0)
    pred_o = model_all.predict(*shapes_o.T)
    i = int(np.argmax(pred_o))
    worst_o = sim.measure(int(shapes_o[i, 0]), float(shapes_o[i, 1]), int(shapes_o[i, 2]))
    original = {"mean_batch_size": rep_o["cuts_yielded"] / rep_o["batches"], "batches": rep_o["batches"],
                "worst_batch": [int(shapes_o[i, 0]), float(shapes_o[i, 1]), int(shapes_o[i, 2])],
                "worst_batch_traced_gib": round(worst_o / GiB, 3)}
    predicted_rows = []
    for spec in args.predict_bins:
        nd, ns = (int(x) for x in spec.split("x"))
        fb = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=nd, num_subbuckets=ns,
                                  method="dp")
        fs = [max(1, math.floor(predicted_max_n(model_all, d, u, limit))) for d, u in bins_as_pairs(fb)]
        r, _ = epoch(lengths, "2d", fb, sizes=fs)
        predicted_rows.append({"bins": spec, "buckets": len(fs), "mean_batch_size": r["cuts_yielded"] / r["batches"],
                               "batches": r["batches"]})

    # Report.
    log("\nfound sizes (bucket: max s, max tokens -> B, B x max s)")
    for r in buckets:
        log(f"  {r['bucket']:3d}: {r['max_duration_s']:5.2f} s {r['max_tokens']:3d} tok -> B={r['batch_size']:4d} "
            f"(peak {r['peak_gib']} GiB; fails at {r['smallest_failure']}), B x s = "
            f"{r['batch_size'] * r['max_duration_s']:.0f}")
    log(f"\nepoch of train-clean-100 (seed 0), {args.preset}, {probe.device_name}, limit {limit / GiB:.2f} GiB")
    epoch_table(f"2D {args.duration_buckets}x{args.sub_buckets} + OOMptimizer (traced)", ours, baselines)
    original["ratio_ours_over_this"] = ours["mean_batch_size"] / original["mean_batch_size"]
    log(f"\ncontext: original Canary-1B recipe (1D x20, 360 s, quadratic 15): {original['batches']} batches, "
        f"mean batch size {original['mean_batch_size']:.2f}, ours / this {original['ratio_ours_over_this']:.2f}; "
        f"its worst batch {original['worst_batch']} traced at {original['worst_batch_traced_gib']} GiB")
    for r in predicted_rows:
        log(f"context (predicted by the memory model, not traced): 2D {r['bins']} ({r['buckets']} buckets): "
            f"mean batch size {r['mean_batch_size']:.2f} ({r['batches']} batches)")
    total_s = time.perf_counter() - t_all
    log(f"\n{len(sim.traces)} traces, {sum(t['seconds'] for t in sim.traces):.0f} s tracing; total {total_s:.0f} s")

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": str(torch.__version__), "preset": args.preset, "vocab_size": dims.vocab_size,
        "tokenizer_vocab": args.tokenizer_vocab, "device": probe.device_name,
        "limit_gib": round(limit / GiB, 3), "precision": args.precision, "bins": pairs,
        "memory_model": {"calibration_points": model.num_points, "mean_rel_error": model.mean_rel_error,
                         "max_rel_error": model.max_rel_error, "held_out_mean_abs_error": float(held_out.mean()),
                         "held_out_max_abs_error": float(held_out.max()), "refit_points": model_all.num_points,
                         "refit_mean_rel_error": model_all.mean_rel_error,
                         "refit_max_rel_error": model_all.max_rel_error},
        "buckets": buckets, "epoch": {"oomptimizer": ours, "baselines": baselines, "original_recipe": original,
                                      "predicted_only": predicted_rows},
        "traces": sim.traces, "total_seconds": round(total_s, 1),
    }
    atomic_write_text(out / "bench_oomptimizer_gpu_sim.json", json.dumps(report, indent=1, default=float))
    log(f"wrote {out / 'bench_oomptimizer_gpu_sim.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
