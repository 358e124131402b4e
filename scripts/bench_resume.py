"""Sampler restore time at two positions far apart in a 1M-cut lazy manifest.

Usage::

    python scripts/bench_resume.py --num-cuts 1000000 --out /tmp/bench_resume

Makes (once, cached) a synthetic ``cuts.jsonl.gz`` of ``--num-cuts`` cuts with lhotse's cut layout, runs one
2D-bucketing epoch over it with the default 20,000-cut buffer, and takes the sampler state after an early step
and after the step where 90% of the manifest has been read. Each state goes through ``torch.save``/``torch.load``
(as in a checkpoint) into a fresh sampler, and the time from ``load_state_dict`` to the first batch is measured
(median of ``--repeats``). For comparison it prints how long the epoch took to reach each position, which is
what a replaying restore (lhotse 1.x) costs. Prints a table and writes ``bench_resume.json``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_ed.atomic import atomic_write_text  # noqa: E402
from speech_ed.sampling import BucketingSampler, estimate_bucket_bins  # noqa: E402
from speech_ed.sampling.stream import gzip_index_path, open_manifest, open_stream  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "su", "to", "ve", "bi", "do", "fe", "gu", "ja", "pe", "ri", "zo"]


def lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    durations = np.round(rng.gamma(3.0, 2.5, size=n).clip(0.5, 30.0), 2)
    words = np.maximum(1, np.round(durations * rng.normal(2.5, 0.4, size=n))).astype(int)
    return durations, words


def make_manifest(path: Path, n: int) -> None:
    """``n`` MonoCut lines (recording, one supervision) written as gzip JSON lines."""
    durations, words = lengths(n)
    rng = np.random.default_rng(2)
    vocab = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(5000)]  # ~5k word types
    tmp = path.with_name(path.name + ".partial")
    with gzip.open(tmp, "wt", compresslevel=6) as f:
        for i in range(n):
            cid, d = f"cut-{i:07d}", float(durations[i])
            text = " ".join(vocab[j] for j in rng.integers(0, len(vocab), size=int(words[i])))
            rec = {"id": cid, "sources": [{"type": "file", "channels": [0], "source": f"/data/audio/{cid}.flac"}],
                   "sampling_rate": 16000, "num_samples": int(d * 16000), "duration": d, "channel_ids": [0]}
            sup = {"id": cid, "recording_id": cid, "start": 0.0, "duration": d, "channel": 0, "text": text,
                   "language": "es", "custom": {"task": "transcribe"}}
            f.write(json.dumps({"id": cid, "start": 0.0, "duration": d, "channel": 0, "supervisions": [sup],
                                "recording": rec, "type": "MonoCut"}) + "\n")
    tmp.replace(path)


def num_tokens(cut) -> int:
    return 6 + len(cut.supervisions[0].text.split())  # prompt (5) + one piece per word + end-of-text


def build_sampler(path: Path, bins) -> BucketingSampler:
    return BucketingSampler(open_manifest(path), num_tokens=num_tokens, bins=bins, strategy="2d", strict=False,
                            max_duration_s=600.0, buffer_size=20000, seed=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-cuts", type=int, default=1_000_000)
    p.add_argument("--manifest", default="/tmp/speech_ed_bench_resume/cuts_1m.jsonl.gz")
    p.add_argument("--early-step", type=int, default=20)
    p.add_argument("--late-fraction", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="/tmp/bench_resume")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    manifest = Path(args.manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        t0 = time.perf_counter()
        make_manifest(manifest, args.num_cuts)
        print(f"wrote {manifest} ({manifest.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    d, w = lengths(50_000, seed=1)
    bins = estimate_bucket_bins(d, w + 6, num_buckets=20, num_subbuckets=3, method="equal")

    index = gzip_index_path(manifest)
    index.unlink(missing_ok=True)
    t0 = time.perf_counter()
    open_stream(open_manifest(manifest)).prepare_resume()
    index_build_s = time.perf_counter() - t0

    sampler = build_sampler(manifest, bins)
    sampler.set_epoch(0)
    states, t0, step = {}, time.perf_counter(), 0
    for _ in sampler:
        step += 1
        seen = sampler.stats["cuts_seen"]
        name = ("early" if step == args.early_step and "early" not in states else
                "late" if seen >= args.late_fraction * args.num_cuts and "late" not in states else None)
        if name:
            reached_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            buf = io.BytesIO()
            torch.save(sampler.state_dict(), buf)
            states[name] = {"step": step, "cuts_read": seen, "reach_s": reached_s, "bytes": buf.getvalue(),
                            "save_s": time.perf_counter() - t1}
            t0 += time.perf_counter() - t1  # saving is not part of the epoch's pace
            if name == "late":
                break
    rows = []
    for name, st in states.items():
        times, first = [], None
        for _ in range(args.repeats):
            fresh = build_sampler(manifest, bins)
            t1 = time.perf_counter()
            fresh.load_state_dict(torch.load(io.BytesIO(st["bytes"]), weights_only=True))
            batch = next(iter(fresh))
            times.append(time.perf_counter() - t1)
            first = batch[0].id
        rows.append({"position": name, "step": st["step"], "cuts_read": st["cuts_read"],
                     "state_mib": round(len(st["bytes"]) / 2**20, 2), "save_s": round(st["save_s"], 3),
                     "restore_s_median": round(statistics.median(times), 3),
                     "restore_s_min": round(min(times), 3), "restore_s_max": round(max(times), 3),
                     "replay_s": round(st["reach_s"], 1), "first_cut": first})
    report = {"num_cuts": args.num_cuts, "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
              "buffer_size": 20000, "buckets": bins.num_buckets, "gzip_index_build_s": round(index_build_s, 2),
              "gzip_index_mib": round(index.stat().st_size / 2**20, 2), "rows": rows,
              "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
              "date": time.strftime("%Y-%m-%d")}
    print(f"{args.num_cuts} cuts, {report['manifest_mib']} MiB gzip; index built once in "
          f"{report['gzip_index_build_s']} s ({report['gzip_index_mib']} MiB)")
    print(f"{'position':8} {'step':>6} {'cuts read':>10} {'state MiB':>9} {'save s':>7} {'restore s':>10} "
          f"{'(min-max)':>13} {'replay s':>9}")
    for r in rows:
        print(f"{r['position']:8} {r['step']:6d} {r['cuts_read']:10d} {r['state_mib']:9.2f} {r['save_s']:7.3f} "
              f"{r['restore_s_median']:10.3f} {r['restore_s_min']:6.3f}-{r['restore_s_max']:<6.3f} "
              f"{r['replay_s']:9.1f}")
    out = Path(args.out)
    atomic_write_text(out / "bench_resume.json", json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
