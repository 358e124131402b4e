"""GPU check of the OOMptimizer, in one go: cuda probe, simulate prediction beside it, then training steps.

Usage (on a machine with one CUDA GPU, from the repository root)::

    python scripts/gpu_oomptimizer_check.py --out "$OUT/oomptimizer_gpu"              # canary_180m_flash
    python scripts/gpu_oomptimizer_check.py --out ... --preset small --steps 30 --target-gpu h100-80gb

1. Writes 2D bins modelled on NeMo's Canary example (3.975 s / 48 tokens ... 40 s / 480 tokens).
2. ``speech-ed oomptimize --probe cuda`` in a fresh process (memory fraction 0.9, second model copy resident).
3. ``speech-ed oomptimize --probe simulate --target-gpu NAME --memory-budget-gib <this GPU's memory>`` with no
   safety margin, so its sizes compare one to one with the measured ones.
4. In this process: ``--steps`` training steps at the cuda sizes, cycling over the three largest buckets
   (same fraction, no cache emptying), then the same at the simulate sizes; out-of-memory errors are counted,
   not fatal.

Prints a table and writes ``<out>/gpu_oomptimizer_check.json`` (plus both YAML files and the logs).
Takes about 5 minutes for canary_180m_flash on an H100.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_ed.sampling import BucketBins, save_bucket_bins  # noqa: E402

# (max_duration_s, max_tokens), after the bucket bounds in NeMo's OOMptimizer documentation for Canary.
BINS = [[3.975, 48], [8.88, 110], [14.7, 180], [20.26, 250], [32.5, 400], [40.0, 480]]


def run_cli(args: list[str], log_path: Path) -> float:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "speech_ed.cli", *args], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    print(log_path.read_text(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): see {log_path}")
    return time.perf_counter() - t0


def gpu_total_gib() -> tuple[float, str]:
    """Total memory and name of GPU 0, read in a child process so this one holds no CUDA context yet."""
    code = ("import torch; p = torch.cuda.get_device_properties(0); "
            "print(p.total_memory / 2**30, torch.cuda.get_device_name(0), sep='|')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    total, name = out.strip().split("|")
    return float(total), name


def train_steps(cfg_overrides: list[str], sizes: list[int], steps: int, fraction: float) -> dict:
    """``steps`` training steps at ``sizes`` over the three largest buckets; counts out-of-memory errors."""
    import torch

    from speech_ed.config import load_config
    from speech_ed.oomptimizer.probes import is_out_of_memory
    from speech_ed.oomptimizer.step import StepSettings, build_training_step

    cfg = load_config([], cfg_overrides)
    torch.cuda.set_per_process_memory_fraction(fraction)
    step = build_training_step(cfg.model, StepSettings.from_config(cfg), "cuda")
    torch.cuda.reset_peak_memory_stats()
    largest = list(range(len(BINS)))[-3:]
    ooms, times = 0, []
    for i in range(steps):
        b = largest[::-1][i % len(largest)]
        t0 = time.perf_counter()
        try:
            step(step.make_batch(sizes[b], BINS[b][0], BINS[b][1]))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            ooms += 1
    out = {"steps": steps, "buckets": largest, "sizes": [sizes[b] for b in largest], "ooms": ooms,
           "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
           "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
           "mean_step_s": round(sum(times) / max(len(times), 1), 3)}
    del step
    torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="canary_180m_flash")
    ap.add_argument("--target-gpu", default="h100-80gb", help="name given to the simulate probe")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bins_path = out / "bucket_bins.yaml"
    save_bucket_bins(bins_path, BucketBins([d for d, _ in BINS], [u for _, u in BINS]))
    overrides = [f"model_preset={args.preset}", f"exp_dir={out}/exp"]
    if args.preset.startswith("canary"):
        overrides.append("loss.ctc_weight=0")  # the Canary presets have no CTC head
    total_gib, name = gpu_total_gib()
    print(f"GPU: {name}, {total_gib:.2f} GiB", flush=True)
    common = ["--bins", str(bins_path), "--memory-fraction", f"{args.memory_fraction:g}", *overrides]
    t_cuda = run_cli(["oomptimize", "--probe", "cuda", "--out", str(out / "cuda.yaml"), *common],
                     out / "cuda.log")
    t_sim = run_cli(["oomptimize", "--probe", "simulate", "--target-gpu", args.target_gpu,
                     "--memory-budget-gib", f"{total_gib:.3f}", "--safety-margin", "0",
                     "--out", str(out / "simulate.yaml"), *common], out / "simulate.log")
    cuda = yaml.safe_load((out / "cuda.yaml").read_text())
    sim = yaml.safe_load((out / "simulate.yaml").read_text())
    at_cuda = train_steps(overrides, cuda["batch_sizes"], args.steps, args.memory_fraction)
    at_sim = train_steps(overrides, sim["batch_sizes"], args.steps, args.memory_fraction)

    print(f"\n{'bucket':>6} {'max_s':>7} {'max_tok':>7} {'cuda_bs':>7} {'cuda_GiB':>8} {'sim_bs':>6} "
          f"{'sim_GiB':>7} {'sim/cuda':>8}")
    rows = []
    for i, (d, u) in enumerate(BINS):
        cb, sb = cuda["batch_sizes"][i], sim["batch_sizes"][i]
        rows.append({"bin": [d, u], "cuda_batch_size": cb, "cuda_peak_gib": cuda["peak_memory_gib"][i],
                     "simulate_batch_size": sb, "simulate_peak_gib": sim["peak_memory_gib"][i],
                     "size_ratio": round(sb / cb, 3) if cb else None})
        print(f"{i:>6} {d:>7.2f} {u:>7} {cb:>7} {cuda['peak_memory_gib'][i] or 0:>8.2f} {sb:>6} "
              f"{sim['peak_memory_gib'][i] or 0:>7.2f} {rows[-1]['size_ratio'] or 0:>8.3f}")
    print(f"\n{args.steps} steps at cuda sizes: {at_cuda}\n{args.steps} steps at simulate sizes: {at_sim}")
    report = {"gpu": name, "total_gib": total_gib, "preset": args.preset,
              "memory_fraction": args.memory_fraction,
              "seconds": {"cuda_search": round(t_cuda, 1), "simulate_search": round(t_sim, 1)},
              "buckets": rows,
              "train_steps_at_cuda_sizes": at_cuda, "train_steps_at_simulate_sizes": at_sim}
    (out / "gpu_oomptimizer_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'gpu_oomptimizer_check.json'}")
    return 0 if at_cuda["ooms"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
