"""The 2D sampler at scale: mean batch per rank, forced partial steps and padding for 1-64 ranks on 285k and
~1M cuts of real LibriSpeech lengths, before and after the scale-correct planner, plus the real sampler's
memory per rank, time to the first batch and restore time at 10 % and 90 % of an epoch at 16 ranks.

Usage::

    .venv/bin/python scripts/bench_sampler_scale.py --out exp/bench_sampler_scale [--before a3a9a87]
    .venv/bin/python scripts/bench_sampler_scale.py --out exp/bench_quick --before HEAD \
        --tsv ../shared/data/librispeech/dev-clean.tsv --copies 1 2 --world-sizes 1 4 --real-world-size 4
                                                                       # a quick check (a test runs it)

Stages (idempotent, artefacts under --out):
  1. ../shared/data/librispeech/train-clean-100.tsv as audio-less cuts, a 1024-piece tokenizer, lengths.
  2. Two corpora: train-clean-100 x10 with new ids (285,390 cuts, the issue's manifest) and x35 with +-5 %
     jittered durations (998,865 cuts); 2D bins 30 x 5 ('equal' estimator) on each.
  3. The table: one simulated epoch (the sampler's own planner on lengths) per world size, with the settings of
     the issue (padding-aware budget 3000 s): 'before' runs the planner of git commit --before in a
     subprocess with its buffer of 30,000 cuts; 'after' runs this tree's planner with its automatic buffer.
  4. The real sampler (``BucketingSampler`` over a 998,865-line ``cuts.jsonl.gz`` with recordings) as rank 0 of
     16: index build, time to the first batch, resident memory, and restore (``load_state_dict`` to the first
     batch, as rank 15, from rank 0's state) at 10 % and 90 % of the epoch.

Prints tables and writes ``<out>/bench_sampler_scale.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_padding import lengths_of, tokenizer_for  # noqa: E402

from speech_ed.atomic import atomic_write_text  # noqa: E402
from speech_ed.sampling import Lengths, estimate_bucket_bins, import_tsv, save_bucket_bins, simulate_epoch  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
WORLD_SIZES = (1, 2, 4, 8, 16, 64)
MAX_DURATION_S = 3000.0
BEFORE_BUFFER = 30000

BEFORE_RUNNER = """
import json, sys, time, warnings
import numpy as np
sys.path.insert(0, sys.argv[1])
from speech_ed.sampling import Lengths, load_bucket_bins, simulate_epoch
warnings.simplefilter("ignore")
lengths, bins = Lengths.load(sys.argv[2]), load_bucket_bins(sys.argv[3])
out = []
for w in json.loads(sys.argv[4]):
    t = time.perf_counter()
    r, batches = simulate_epoch(lengths, "2d", bins, max_duration_s=float(sys.argv[5]), world_size=w,
                                buffer_size=int(sys.argv[6]))
    sizes = [len(b) for b in batches]
    out.append({"world_size": w, "steps": r["num_steps"], "forced_steps": r["forced_steps"],
                "tail_steps": r["tail_steps"], "mean_batch": float(np.mean(sizes)),
                "input_padding": r["input_padding"], "output_padding": r["output_padding"],
                "seconds": time.perf_counter() - t})
print(json.dumps(out))
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def straggler_p90(lengths: Lengths, batches: list, world_size: int) -> float:
    """90th percentile over steps of max/min padded seconds across the step's ranks (1.0 = perfectly even)."""
    d = lengths.durations
    padded = np.array([len(b) * d[b].max() for b in batches])
    steps = padded[: len(padded) // world_size * world_size].reshape(-1, world_size)
    return float(np.percentile(steps.max(axis=1) / steps.min(axis=1), 90))


def after_row(lengths: Lengths, bins, w: int) -> dict:
    t = time.perf_counter()
    r, batches = simulate_epoch(lengths, "2d", bins, max_duration_s=MAX_DURATION_S, world_size=w)
    return {"world_size": w, "steps": r["num_steps"], "forced_steps": r["forced_steps"],
            "tail_steps": r["tail_steps"], "mean_batch": float(np.mean([len(b) for b in batches])),
            "input_padding": r["input_padding"], "output_padding": r["output_padding"],
            "buffer_size": r["buffer_size"], "needed_buffer_size": r["needed_buffer_size"],
            "straggler_p90": straggler_p90(lengths, batches, w), "duplicated": r["duplicated"],
            "seconds": time.perf_counter() - t}


def before_rows(commit: str, out: Path, lengths_path: Path, bins_path: Path, world_sizes) -> list[dict]:
    tree = out / f"before_{commit}"
    if not (tree / "speech_ed").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "speech_ed"], cwd=ROOT, capture_output=True, check=True)
        tarfile.open(fileobj=__import__("io").BytesIO(archive.stdout)).extractall(tree)
    proc = subprocess.run([sys.executable, "-c", BEFORE_RUNNER, str(tree), str(lengths_path), str(bins_path),
                           json.dumps(list(world_sizes)), str(MAX_DURATION_S), str(BEFORE_BUFFER)],
                          capture_output=True, text=True, cwd="/")  # not ROOT: import the old tree
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(title: str, before: list[dict], after: list[dict]) -> None:
    log(f"\n## {title}")
    log(f"{'ranks':>5} | {'before: steps':>13}{'forced':>8}{'mean bs':>9}{'vs 1':>7} | {'after: steps':>12}"
        f"{'forced':>8}{'mean bs':>9}{'vs 1':>7}{'in pad':>8}{'out pad':>8}{'strag.':>7}{'buffer':>9}")
    b1, a1 = before[0]["mean_batch"], after[0]["mean_batch"]
    for b, a in zip(before, after):
        log(f"{a['world_size']:>5} | {b['steps']:>13}{b['forced_steps']:>8}{b['mean_batch']:>9.1f}"
            f"{b['mean_batch'] / b1:>7.3f} | {a['steps']:>12}{a['forced_steps']:>8}{a['mean_batch']:>9.1f}"
            f"{a['mean_batch'] / a1:>7.3f}{100 * a['input_padding']:>7.2f}%{100 * a['output_padding']:>7.2f}%"
            f"{a['straggler_p90']:>7.3f}{a['buffer_size']:>9}")


def write_manifest(path: Path, lengths: Lengths, texts: list[str], copies: int) -> None:
    """``len(lengths)`` MonoCut lines with a recording and one supervision, as lhotse writes them."""
    if path.is_file():
        return
    tmp = path.with_name(path.name + ".partial")
    with gzip.open(tmp, "wt", compresslevel=6) as f:
        for i, (d, text) in enumerate(zip(lengths.durations.tolist(), texts * copies)):
            cid = f"cut-{i:07d}"
            rec = {"id": cid, "sources": [{"type": "file", "channels": [0], "source": f"/data/ls/{cid}.flac"}],
                   "sampling_rate": 16000, "num_samples": int(d * 16000), "duration": d, "channel_ids": [0]}
            sup = {"id": cid, "recording_id": cid, "start": 0.0, "duration": d, "channel": 0, "text": text,
                   "language": "en", "speaker": cid[:8]}
            f.write(json.dumps({"id": cid, "start": 0.0, "duration": d, "channel": 0, "supervisions": [sup],
                                "recording": rec, "type": "MonoCut"}) + "\n")
    os.replace(tmp, path)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def real_sampler(out: Path, tokenizer, lengths: Lengths, texts: list[str], copies: int, bins,
                 expected_steps: int, world_size: int) -> dict:
    """Stage 4 (see the module docstring); states are taken at 10 % and 90 % of ``expected_steps`` (the
    simulated epoch's), and the real fractions reported."""
    import torch

    from speech_ed.data.indexing import cached_index
    from speech_ed.data.sources import LhotseSource
    from speech_ed.sampling import BucketingSampler

    manifest = out / f"large_x{copies}_cuts.jsonl.gz"
    t = time.perf_counter()
    write_manifest(manifest, lengths, texts, copies)
    res: dict = {"manifest_bytes": manifest.stat().st_size, "manifest_write_s": time.perf_counter() - t,
                 "world_size": world_size, "num_cuts": len(lengths)}
    cache = out / "index_cache"
    for p in cache.glob("*.npz"):
        p.unlink()
    t = time.perf_counter()
    index = cached_index("lhotse", [manifest], tokenizer, cache)
    res["index_build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = cached_index("lhotse", [manifest], tokenizer, cache)
    res["index_load_s"] = time.perf_counter() - t
    res["index_bytes"] = int(sum(a.nbytes for a in [index.durations, index.tokens, index.status, index.file,
                                                   index.offset, *index.extra.values()]))
    log(f"real sampler: {len(index)} cuts, index built in {res['index_build_s']:.1f} s, "
        f"loaded in {res['index_load_s']:.2f} s ({res['index_bytes'] / 2**20:.1f} MiB)")

    def make(rank):
        return BucketingSampler(sources=[LhotseSource([manifest], index, "large")], bins=bins,
                                max_duration_s=MAX_DURATION_S, world_size=world_size, rank=rank, seed=0)

    import tracemalloc

    tracemalloc.start()  # memory pass: every byte Python and numpy allocate for the sampler, epoch included
    sampler = make(0)
    sampler.set_epoch(1)
    it = iter(sampler)
    next(it)
    res["traced_first_batch_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
    for _ in it:
        pass
    res["traced_epoch_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del sampler, it
    base = rss_mib()
    sampler = make(0)
    sampler.set_epoch(1)
    t = time.perf_counter()
    it = iter(sampler)
    next(it)
    res["first_batch_s"] = time.perf_counter() - t
    res["rss_growth_first_batch_mib"] = rss_mib() - base
    planner = sampler.active_plan.planner
    res["buffer_size"], res["buffered_at_first_batch"] = planner.buffer_size, planner.buffered
    res["held_lines_rank0"] = len(sampler._held)
    res["held_line_bytes_rank0"] = int(sum(len(v[1]) for v in sampler._held.values()))
    marks = {max(2, round(0.1 * expected_steps)): "10%", max(3, round(0.9 * expected_steps)): "90%"}
    states, k = {}, 1
    for _ in it:
        k += 1
        if k in marks:
            states[marks[k]] = (k, sampler.state_dict())
            res[f"rss_growth_{marks[k]}_mib"] = rss_mib() - base
    res["steps_per_epoch"] = steps_total = k
    for label, (k, state) in states.items():
        path = out / f"state_{label.rstrip('%')}.pt"
        torch.save(state, path)
        res[f"state_bytes_{label}"] = path.stat().st_size
        resumed = make(world_size - 1)
        t = time.perf_counter()
        resumed.load_state_dict(torch.load(path, weights_only=True))
        next(iter(resumed))
        res[f"restore_s_{label}"] = time.perf_counter() - t
        res[f"restore_step_{label}"] = k
        res[f"restore_fraction_{label}"] = round(k / steps_total, 3)
        log(f"restore at {label} (step {k}/{steps_total}) as rank {world_size - 1}: {res[f'restore_s_{label}']:.2f} s, "
            f"state {res[f'state_bytes_{label}'] / 2**20:.1f} MiB")
    log(f"real sampler, rank 0 of {world_size}: first batch after {res['first_batch_s']:.1f} s, buffer "
        f"{res['buffer_size']}, allocated {res['traced_first_batch_mib']:.0f} MiB at the first batch, peak "
        f"{res['traced_epoch_peak_mib']:.0f} MiB over the epoch (RSS growth {res['rss_growth_first_batch_mib']:.0f} "
        f"MiB), {res['held_lines_rank0']} own lines ({res['held_line_bytes_rank0'] / 2**20:.1f} MiB)")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="exp/bench_sampler_scale")
    p.add_argument("--before", default="a3a9a87", help="git commit of the 'before' planner")
    p.add_argument("--skip-real", action="store_true", help="only the simulated tables")
    p.add_argument("--tsv", default=str(DATA / "librispeech" / "train-clean-100.tsv"), help="corpus metadata")
    p.add_argument("--copies", type=int, nargs=2, default=[10, 35],
                   help="replicas for the two corpora (the second with jittered durations)")
    p.add_argument("--world-sizes", type=int, nargs="+", default=list(WORLD_SIZES))
    p.add_argument("--real-world-size", type=int, default=16, help="world size of stage 4")
    args = p.parse_args()
    out = Path(args.out).resolve()  # absolute: the 'before' subprocess runs elsewhere
    out.mkdir(parents=True, exist_ok=True)
    tsv = Path(args.tsv)
    cuts = out / f"{tsv.stem}.jsonl.gz"
    if not cuts.is_file():
        import_tsv(tsv, cuts, language="en")
    tokenizer = tokenizer_for([cuts], out / "tokenizer", ["en"])
    base = lengths_of([cuts], tokenizer, out / f"{tsv.stem}_lengths.npz")
    texts = [line.split("\t")[2] for line in tsv.read_text(encoding="utf-8").splitlines()[1:]]
    rng = np.random.default_rng(0)
    a, b = args.copies
    corpora = {  # names as in the issue for the default copies (10 -> 285k, 35 -> ~1M)
        "small": Lengths(np.tile(base.ids, a), np.tile(base.durations, a), np.tile(base.tokens, a)),
        "large": Lengths(np.tile(base.ids, b),
                         np.round(np.tile(base.durations, b) * rng.uniform(0.95, 1.05, b * len(base)), 3),
                         np.tile(base.tokens, b)),
    }
    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "max_duration_s": MAX_DURATION_S,
              "before_commit": args.before, "before_buffer_size": BEFORE_BUFFER, "tables": {}}
    bins_large = None
    for name, lengths in corpora.items():
        lengths_path = out / f"lengths_{name}.npz"
        lengths.save(lengths_path)
        bins = estimate_bucket_bins(lengths.durations, lengths.tokens, 30, 5, "equal")
        bins_path = out / f"bins_{name}.yaml"
        save_bucket_bins(bins_path, bins)
        if name == "large":
            bins_large = bins
        log(f"{name}: {len(lengths)} cuts, {lengths.durations.sum() / 3600:.0f} h, {bins.num_buckets} buckets")
        before = before_rows(args.before, out, lengths_path, bins_path, args.world_sizes)
        after = [after_row(lengths, bins, w) for w in args.world_sizes]
        report["tables"][name] = {"num_cuts": len(lengths), "num_buckets": bins.num_buckets,
                                  "before": before, "after": after}
        print_table(f"{name} cuts ({len(lengths)}), {bins.num_buckets} buckets, budget {MAX_DURATION_S:.0f} s: "
                    f"before = {args.before} (buffer {BEFORE_BUFFER}), after = automatic buffer", before, after)
        atomic_write_text(out / "bench_sampler_scale.json", json.dumps(report, indent=1))
    if not args.skip_real:
        w = args.real_world_size
        row = next((r for r in report["tables"]["large"]["after"] if r["world_size"] == w), None)
        steps = row["steps"] if row else after_row(corpora["large"], bins_large, w)["steps"]
        report["real_sampler"] = real_sampler(out, tokenizer, corpora["large"], texts, b, bins_large, steps, w)
    atomic_write_text(out / "bench_sampler_scale.json", json.dumps(report, indent=1))
    log(f"wrote {out / 'bench_sampler_scale.json'}")


if __name__ == "__main__":
    main()
