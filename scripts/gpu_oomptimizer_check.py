"""GPU check of the OOMptimizer, in one go: cuda probe, simulate prediction beside it, then training steps.

Usage (on a machine with one CUDA GPU, from the repository root)::

    python scripts/gpu_oomptimizer_check.py --out "$OUT/oomptimizer_gpu"    # canary_180m_flash and canary_1b
    python scripts/gpu_oomptimizer_check.py --out ... --presets small --steps 30 --target-gpu h100-80gb

For each preset:

1. Writes 2D bins modelled on NeMo's Canary example (3.975 s / 48 tokens ... 40 s / 480 tokens).
2. ``speech-ed oomptimize --probe cuda`` in a fresh process (memory fraction 0.9, second model copy resident).
3. ``speech-ed oomptimize --probe simulate --target-gpu NAME --memory-budget-gib <this GPU's memory>`` with no
   safety margin, so its sizes compare one to one with the measured ones. NAME defaults to the GPU found
   (``--target-gpu auto``: an H200 is planned as h200-141gb, an H100 as h100-80gb, ...), so the simulate probe
   models the same compute capability.
4. In this process: ``--steps`` training steps at the cuda sizes, cycling over the three largest buckets
   (same fraction, no cache emptying), then the same at the simulate sizes; out-of-memory errors are counted,
   not fatal.

Prints a table per preset (cuda size and peak, simulate size and peak, ratio) and writes
``<out>/gpu_oomptimizer_check.json`` (plus the YAML files and logs under ``<out>/<preset>/``).
Takes about 5 minutes for canary_180m_flash and 10 for canary_1b on an H100.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_oomptimizer_common import H100_BINS as BINS  # noqa: E402
from bench_oomptimizer_common import ROOT  # noqa: E402

from speech_ed.sampling import BucketBins, save_bucket_bins  # noqa: E402


def run_cli(args: list[str], log_path: Path) -> float:
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "speech_ed.cli", *args], cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    print(log_path.read_text(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): see {log_path}")
    return time.perf_counter() - t0


def gpu_total_gib() -> tuple[float, str, tuple[int, int]]:
    """Total memory, name and compute capability of GPU 0, read in a child process so this one holds no CUDA
    context yet."""
    code = ("import torch; p = torch.cuda.get_device_properties(0); "
            "print(p.total_memory / 2**30, torch.cuda.get_device_name(0), p.major, p.minor, sep='|')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    total, name, major, minor = out.strip().split("|")
    return float(total), name, (int(major), int(minor))


def guess_target_gpu(name: str, total_gib: float, capability: tuple[int, int]) -> str:
    """The simulate probe's GPU name for this device: by model name, else the listed GPU of the same compute
    capability whose memory is closest."""
    from speech_ed.oomptimizer.cuda_model import GPU_COMPUTE_CAPABILITY
    from speech_ed.oomptimizer.probes import GPU_MEMORY_GIB

    for key in GPU_MEMORY_GIB:
        model = key.split("-")[0]
        if model in name.lower().replace(" ", "") and abs(GPU_MEMORY_GIB[key] - total_gib) < 0.1 * total_gib:
            return key
    same = [k for k, c in GPU_COMPUTE_CAPABILITY.items() if c == capability] or list(GPU_MEMORY_GIB)
    return min(same, key=lambda k: abs(GPU_MEMORY_GIB[k] - total_gib))


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


def check_preset(preset: str, out: Path, target_gpu: str, total_gib: float, steps: int,
                 fraction: float) -> dict:
    """Steps 1-4 for one preset; prints its table and returns its report."""
    out.mkdir(parents=True, exist_ok=True)
    bins_path = out / "bucket_bins.yaml"
    save_bucket_bins(bins_path, BucketBins([d for d, _ in BINS], [u for _, u in BINS]))
    overrides = [f"model_preset={preset}", f"exp_dir={out}/exp"]
    if preset.startswith("canary"):
        overrides.append("loss.ctc_weight=0")  # the Canary presets have no CTC head
    common = ["--bins", str(bins_path), "--memory-fraction", f"{fraction:g}", *overrides]
    t_cuda = run_cli(["oomptimize", "--probe", "cuda", "--out", str(out / "cuda.yaml"), *common],
                     out / "cuda.log")
    t_sim = run_cli(["oomptimize", "--probe", "simulate", "--target-gpu", target_gpu,
                     "--memory-budget-gib", f"{total_gib:.3f}", "--safety-margin", "0",
                     "--out", str(out / "simulate.yaml"), *common], out / "simulate.log")
    cuda = yaml.safe_load((out / "cuda.yaml").read_text())
    sim = yaml.safe_load((out / "simulate.yaml").read_text())
    at_cuda = train_steps(overrides, cuda["batch_sizes"], steps, fraction)
    at_sim = train_steps(overrides, sim["batch_sizes"], steps, fraction)

    print(f"\n{preset}, simulate as {target_gpu}")
    print(f"{'bucket':>6} {'max_s':>7} {'max_tok':>7} {'cuda_bs':>7} {'cuda_GiB':>8} {'sim_bs':>6} "
          f"{'sim_GiB':>7} {'sim/cuda':>8}")
    rows = []
    for i, (d, u) in enumerate(BINS):
        cb, sb = cuda["batch_sizes"][i], sim["batch_sizes"][i]
        rows.append({"bin": [d, u], "cuda_batch_size": cb, "cuda_peak_gib": cuda["peak_memory_gib"][i],
                     "simulate_batch_size": sb, "simulate_peak_gib": sim["peak_memory_gib"][i],
                     "size_ratio": round(sb / cb, 3) if cb else None})
        print(f"{i:>6} {d:>7.2f} {u:>7} {cb:>7} {cuda['peak_memory_gib'][i] or 0:>8.2f} {sb:>6} "
              f"{sim['peak_memory_gib'][i] or 0:>7.2f} {rows[-1]['size_ratio'] or 0:>8.3f}")
    print(f"\n{steps} steps at cuda sizes: {at_cuda}\n{steps} steps at simulate sizes: {at_sim}", flush=True)
    return {"preset": preset, "target_gpu": target_gpu,
            "seconds": {"cuda_search": round(t_cuda, 1), "simulate_search": round(t_sim, 1)},
            "buckets": rows, "train_steps_at_cuda_sizes": at_cuda, "train_steps_at_simulate_sizes": at_sim}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", nargs="+", default=["canary_180m_flash", "canary_1b"])
    ap.add_argument("--target-gpu", default="auto", help="name given to the simulate probe (auto: this GPU)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total_gib, name, capability = gpu_total_gib()
    target = guess_target_gpu(name, total_gib, capability) if args.target_gpu == "auto" else args.target_gpu
    print(f"GPU: {name}, {total_gib:.2f} GiB, sm{capability[0]}{capability[1]}; simulate plans for {target}",
          flush=True)
    reports = [check_preset(p, out / p, target, total_gib, args.steps, args.memory_fraction)
               for p in args.presets]
    report = {"gpu": name, "total_gib": total_gib, "capability": list(capability),
              "memory_fraction": args.memory_fraction, "presets": reports}
    (out / "gpu_oomptimizer_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'gpu_oomptimizer_check.json'}")
    return 0 if all(r["train_steps_at_cuda_sizes"]["ooms"] == 0 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
