"""The simulate probe against the H100 cuda probe of session 2, per bucket: before and after the CUDA model.

Usage::

    nice -n 5 .venv/bin/python scripts/bench_oomptimizer_simulate_vs_cuda.py \\
        --out exp/bench_oomptimizer_simulate_vs_cuda [--preset canary_180m_flash] [--skip-variants]

Reproduces the simulate side of ``scripts/gpu_oomptimizer_check.py``'s H100 run on this CPU: its six bins
(3.975 s / 48 tokens ... 40 s / 480 tokens), canary_180m_flash (V = 5248, no CTC head), bf16-mixed, AdamW,
second model copy resident, memory fraction 0.9 of 79.18 GiB (limit 71.26 GiB), no safety margin, the
OOMptimizer's own search (start 32, relative gap 5 %, largest bucket first). The H100 figures it compares
with are recorded in ``bench_oomptimizer_common`` (docs/BENCHMARKS.md, session 2).

1. ``before``: ``GpuModel.none()``, the trace session 2 ran (CPU attention, autocast and dropout; fits when
   the tensors alive are at most the limit). Its sizes should be session 2's 796/327/181/121/65/50.
2. ``after``: the full CUDA model (fused attention, CUDA autocast and dropout, workspaces, the caching
   allocator kept from trial to trial as in the cuda probe).
3. Tensor peaks at the cuda sizes, the model's terms added one at a time, against the H100's
   ``max_memory_allocated`` at those sizes.
4. Variants of the fit rule (skipped with ``--skip-variants``): the allocator started afresh for every trial,
   and no allocator (tensors alive <= limit).

Prints the tables and writes ``<out>/bench_oomptimizer_simulate_vs_cuda.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_oomptimizer_common import (  # noqa: E402
    H100_BINS,
    H100_CUDA_PEAK_GIB,
    H100_CUDA_SIZES,
    H100_SIMULATE_SIZES,
    H100_TOTAL_GIB,
    ROOT,
    GiB,
    log,
)

from speech_ed.config import load_model_preset  # noqa: E402
from speech_ed.oomptimizer import SimulateProbe, StepSettings, run_oomptimizer  # noqa: E402
from speech_ed.oomptimizer.cuda_model import GPU_COMPUTE_CAPABILITY, GpuModel  # noqa: E402
from speech_ed.sampling.io import atomic_write_text  # noqa: E402

NONE = GpuModel.none()
# The model's terms added one at a time (each row adds one to the row above).
_ATTN = replace(NONE, fused_attention=True)
_AUTOCAST = replace(_ATTN, cuda_autocast=True)
_DROPOUT = replace(_AUTOCAST, cuda_dropout=True)
TERMS = [
    ("session 2 trace (CPU semantics)", NONE),
    ("+ fused attention", _ATTN),
    ("+ CUDA autocast (fp32 LayerNorm, softmax)", _AUTOCAST),
    ("+ CUDA dropout (bool masks)", _DROPOUT),
    ("+ kernel and cuBLAS workspaces", replace(_DROPOUT, kernel_workspaces=True, cublas_workspaces=True)),
]


def probe_for(dims, settings, limit, model: GpuModel) -> SimulateProbe:
    return SimulateProbe(dims, settings, limit, gpu_like=True, device_name="simulated h100-80gb",
                         capability=GPU_COMPUTE_CAPABILITY["h100-80gb"], gpu_model=model)


def search(name, dims, settings, limit, model: GpuModel) -> dict:
    t0 = time.perf_counter()
    probe = probe_for(dims, settings, limit, model)
    results = run_oomptimizer([tuple(b) for b in H100_BINS], probe, log=lambda m: log(f"  [{name}] {m}"))
    return {"name": name, "gpu_model": model.__dict__, "sizes": [r.batch_size for r in results],
            "peak_gib": [None if r.peak_bytes is None else round(r.peak_bytes / GiB, 3) for r in results],
            "trials": [[[t.batch_size, t.fits, t.note] for t in r.trials] for r in results],
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp/bench_oomptimizer_simulate_vs_cuda")
    ap.add_argument("--preset", default="canary_180m_flash")
    ap.add_argument("--total-gib", type=float, default=H100_TOTAL_GIB, help="the GPU's memory (H100: 79.18)")
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    ap.add_argument("--skip-variants", action="store_true", help="only before, after and the peaks")
    ap.add_argument("--vocab-size", type=int, default=None, help="logit size (default: the preset's)")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    dims = load_model_preset(args.preset)
    if args.vocab_size:
        dims = replace(dims, vocab_size=args.vocab_size)
    settings = StepSettings(ctc_weight=0.3 if dims.ctc_head else 0.0)
    limit = int(args.total_gib * args.memory_fraction * GiB)
    log(f"{args.preset}, V={dims.vocab_size}, limit {limit / GiB:.3f} GiB, bins {H100_BINS}")

    runs = [search("before", dims, settings, limit, NONE), search("after", dims, settings, limit, GpuModel())]
    if not args.skip_variants:
        runs.append(search("after, allocator afresh each trial", dims, settings, limit,
                           GpuModel(keep_cache=False)))
        runs.append(search("after, no allocator (tensors <= limit)", dims, settings, limit,
                           GpuModel(allocator=False)))

    peaks = []
    for name, model in TERMS:
        probe = probe_for(dims, settings, limit, replace(model, allocator=False))
        row = [round(probe.peak_bytes(n, d, u) / GiB, 2) for n, (d, u) in zip(H100_CUDA_SIZES, H100_BINS)]
        peaks.append({"terms": name, "peak_gib_at_cuda_sizes": row})
        log(f"  peaks at the cuda sizes, {name}: {row}")

    log(f"\nper bucket: H100 cuda probe vs simulate (limit {limit / GiB:.2f} GiB)")
    head = f"{'max_s':>6} {'max_tok':>7} {'cuda':>5} " + " ".join(f"{r['name'][:18]:>18}" for r in runs)
    log(head)
    for i, (d, u) in enumerate(H100_BINS):
        cells = " ".join(f"{r['sizes'][i]:>7} ({r['sizes'][i] / H100_CUDA_SIZES[i]:5.3f})  " for r in runs)
        log(f"{d:>6.2f} {u:>7} {H100_CUDA_SIZES[i]:>5} {cells}")
    before_ok = runs[0]["sizes"] == H100_SIMULATE_SIZES
    log(f"before reproduces session 2's simulate sizes {H100_SIMULATE_SIZES}: {before_ok}")
    worst = max(abs(s / c - 1) for s, c in zip(runs[1]["sizes"], H100_CUDA_SIZES))
    log(f"after: largest deviation from the cuda sizes {worst:.1%} (criterion: within 10 % on every bucket)")
    log("\ntensor peak (GiB) at the cuda sizes vs the H100's max_memory_allocated")
    log(f"{'terms':<44} " + " ".join(f"{d:>6.2f}s" for d, _ in H100_BINS))
    log(f"{'H100 cuda probe (measured)':<44} " + " ".join(f"{p:>7.2f}" for p in H100_CUDA_PEAK_GIB))
    for row in peaks:
        log(f"{row['terms']:<44} " + " ".join(f"{p:>7.2f}" for p in row["peak_gib_at_cuda_sizes"]))

    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": str(torch.__version__), "preset": args.preset, "vocab_size": dims.vocab_size,
              "limit_gib": round(limit / GiB, 3), "bins": H100_BINS,
              "h100": {"cuda_sizes": H100_CUDA_SIZES, "cuda_peak_gib": H100_CUDA_PEAK_GIB,
                       "session2_simulate_sizes": H100_SIMULATE_SIZES},
              "searches": runs, "before_reproduces_session2": before_ok, "after_max_deviation": worst,
              "peaks_at_cuda_sizes": peaks, "total_seconds": round(time.perf_counter() - t_all, 1)}
    atomic_write_text(out / "bench_oomptimizer_simulate_vs_cuda.json", json.dumps(report, indent=1))
    log(f"wrote {out / 'bench_oomptimizer_simulate_vs_cuda.json'} ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
