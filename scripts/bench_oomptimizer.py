"""OOMptimizer acceptance benchmark on the CPU: per-bucket batch sizes vs the best single max_duration_s.

Usage::

    flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_oomptimizer.py --out exp/bench_oomptimizer
    ... --budget-gib 1.5 --duration-buckets 8 --sub-buckets 2 --preset small

Stages (artefacts under --out; the tokenizer and lengths are cached):
  1. LibriSpeech train-clean-100 metadata (../shared/data): a 512-piece tokenizer on its transcripts, decoder
     tokens per utterance (prompt + text + end), 2D bins ('dp', D x M buckets).
  2. The OOMptimizer with the cpu probe at --budget-gib (memory fraction 1.0, so the limit is the budget),
     small preset, bf16-mixed, AdamW, second model copy resident.
  3. Shortest, middle and longest bucket: full (not stopped) measurements at the found size B and at
     ceil(1.1 B); the simulate probe's estimate for the same batches.
  4. One epoch (seed 0) with the found sizes (2D, lenient) against padding-aware max_duration_s budgets:
     1D buckets without and with a quadratic penalty, and no bucketing. For each, the largest max_duration_s
     whose every batch fits the budget is found with a memory model fitted on the stage-2/3 measurements, then
     the 3 batches the model ranks highest are measured for real (max_duration_s is lowered 2 % until they
     fit) and the top batch of a 5 % larger max_duration_s is measured to show it does not fit.

Prints tables and writes ``<out>/bench_oomptimizer.json``.
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

from bench_oomptimizer_common import (  # noqa: E402
    MemoryModel,
    calibration_points,
    cpu_judge,
    epoch,
    epoch_summary,
    epoch_table,
    largest_safe_budget,
)

from speech_ed.config import load_model_preset  # noqa: E402
from speech_ed.data.prompt import PROMPT_LEN  # noqa: E402
from speech_ed.data.text import normalize_text  # noqa: E402
from speech_ed.data.tokenizer import Tokenizer  # noqa: E402
from speech_ed.oomptimizer import CpuProbe, SimulateProbe, StepSettings, bins_as_pairs, run_oomptimizer  # noqa: E402
from speech_ed.sampling import Lengths, estimate_bucket_bins, iter_tsv_rows  # noqa: E402
from speech_ed.sampling.io import atomic_write_text  # noqa: E402

GiB = 1 << 30
TSV = ROOT.parent / "shared" / "data" / "librispeech" / "train-clean-100.tsv"


def log(msg: str) -> None:
    print(msg, flush=True)


def load_lengths(out: Path) -> tuple[Lengths, int]:
    """Durations and decoder tokens of train-clean-100 (tokenizer trained once, lengths cached)."""
    rows = list(iter_tsv_rows(TSV))
    texts = [normalize_text(r["text"]) for r in rows]
    tok_dir = out / "tokenizer"
    tok = Tokenizer.load(tok_dir) if (tok_dir / "tokenizer.model").is_file() else \
        Tokenizer.train(texts, tok_dir, vocab_size=512, languages=["en"])
    cache = out / "lengths.npz"
    if cache.is_file():
        return Lengths.load(cache), tok.vocab_size
    tokens = np.array([PROMPT_LEN + len(tok.encode(t)) + 1 for t in texts], dtype=np.int64)
    durations = np.array([float(r["duration_seconds"]) for r in rows])
    lengths = Lengths(np.array([r["id"] for r in rows]), durations, tokens)
    lengths.save(cache)
    return lengths, tok.vocab_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp/bench_oomptimizer")
    ap.add_argument("--budget-gib", type=float, default=1.5)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--duration-buckets", type=int, default=8)
    ap.add_argument("--sub-buckets", type=int, default=2)
    ap.add_argument("--quadratic", type=float, nargs="*", default=[15.0, 30.0])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    limit = int(args.budget_gib * GiB)

    lengths, vocab = load_lengths(out)
    bins = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=args.duration_buckets,
                                num_subbuckets=args.sub_buckets, method="dp")
    pairs = bins_as_pairs(bins)
    log(f"{len(lengths)} utterances, vocabulary {vocab}, {len(pairs)} buckets: {pairs}")

    dims = replace(load_model_preset(args.preset), vocab_size=vocab)
    settings = StepSettings()  # the config defaults: bf16-mixed, AdamW(0.9, 0.98), wd 0.01, clip 5, ctc 0.3
    probe = CpuProbe(dims, settings, limit)
    t0 = time.perf_counter()
    results = run_oomptimizer(pairs, probe, log=log)
    search_s = time.perf_counter() - t0
    sizes = [r.batch_size for r in results]
    log(f"search: {search_s:.0f} s, {sum(len(r.trials) for r in results)} trials, sizes {sizes}")

    # Stage 3: three buckets measured in full at B and 1.1 B, and simulated.
    sim = SimulateProbe(dims, settings, limit)
    points = [(t.batch_size, r.max_duration_s, r.max_tokens, t.peak_bytes)
              for r in results for t in r.trials if t.peak_bytes is not None and not t.note]
    checks = []
    for b in (0, len(pairs) // 2, len(pairs) - 1):
        r = results[b]
        row = {"bucket": b, "max_duration_s": r.max_duration_s, "max_tokens": r.max_tokens,
               "batch_size": r.batch_size}
        for key, n in (("at_B", r.batch_size), ("at_1.1B", math.ceil(1.1 * r.batch_size))):
            cpu = probe.measure(n, r.max_duration_s, r.max_tokens)
            est = sim.peak_bytes(n, r.max_duration_s, r.max_tokens)
            points.append((n, r.max_duration_s, r.max_tokens, cpu))
            row[key] = {"n": n, "cpu_gib": round(cpu / GiB, 4), "simulate_gib": round(est / GiB, 4),
                        "simulate_error": round(est / cpu - 1, 4)}
        row["pass"] = row["at_B"]["cpu_gib"] * GiB <= limit < row["at_1.1B"]["cpu_gib"] * GiB
        checks.append(row)

    # Stage 4: epoch mean batch size.
    judge = cpu_judge(probe)
    points += calibration_points(lengths, judge, lambda d, u: [2, 6])
    model = MemoryModel(points)
    log(f"memory model: {model.num_points} points, mean/max relative error {model.mean_rel_error:.3%} / "
        f"{model.max_rel_error:.3%}")
    rep, shapes = epoch(lengths, "2d", bins, sizes=sizes)
    worst = float(model.predict(shapes[:, 0], shapes[:, 1], shapes[:, 2]).max())
    ours = {**epoch_summary(rep), "max_predicted_gib": round(worst / GiB, 4)}
    bins_1d = estimate_bucket_bins(lengths.durations, num_buckets=30, method="equal")
    baselines = [largest_safe_budget(lengths, "1d", bins_1d, q, model, judge)
                 for q in [None, *args.quadratic]]
    baselines.append(largest_safe_budget(lengths, "random", None, None, model, judge))

    log("\nacceptance: measured peak at the found size B and at 1.1 B (limit %.2f GiB)" % args.budget_gib)
    log(f"{'bucket':>6} {'max_s':>7} {'max_tok':>7} {'B':>5} {'cpu@B':>7} {'sim@B':>7} {'cpu@1.1B':>8} "
        f"{'sim@1.1B':>8} {'pass':>5}")
    for c in checks:
        a, b = c["at_B"], c["at_1.1B"]
        log(f"{c['bucket']:>6} {c['max_duration_s']:>7.2f} {c['max_tokens']:>7} {c['batch_size']:>5} "
            f"{a['cpu_gib']:>7.3f} {a['simulate_gib']:>7.3f} {b['cpu_gib']:>8.3f} {b['simulate_gib']:>8.3f} "
            f"{str(c['pass']):>5}")
    log("\nepoch of train-clean-100 (seed 0): mean batch size")
    epoch_table(f"2D {args.duration_buckets}x{args.sub_buckets} + OOMptimizer sizes", ours, baselines)
    total_s = time.perf_counter() - t_all
    log(f"\ntotal {total_s:.0f} s (search {search_s:.0f} s)")

    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": str(torch.__version__), "preset": args.preset, "vocab_size": vocab,
        "budget_gib": args.budget_gib,
        "bins": pairs, "search_seconds": round(search_s, 1), "total_seconds": round(total_s, 1),
        "buckets": [{"bin": [r.max_duration_s, r.max_tokens], "batch_size": r.batch_size,
                     "peak_gib": None if r.peak_bytes is None else round(r.peak_bytes / GiB, 4),
                     "trials": [[t.batch_size, t.fits,
                                 None if t.peak_bytes is None else round(t.peak_bytes / GiB, 4),
                                 round(t.seconds, 2), t.note[:40]] for t in r.trials],
                     "seconds": round(r.seconds, 1)}
                    for r in results],
        "acceptance_buckets": checks,
        "memory_model": {"points": model.num_points, "mean_rel_error": model.mean_rel_error,
                         "max_rel_error": model.max_rel_error},
        "epoch": {"oomptimizer": ours, "baselines": baselines},
    }
    atomic_write_text(out / "bench_oomptimizer.json", json.dumps(report, indent=1))
    log(f"wrote {out / 'bench_oomptimizer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
