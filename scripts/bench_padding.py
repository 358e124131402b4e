"""Padding benchmark: random / 1D / 2D bucketing and lhotse's DynamicBucketingSampler on real corpus metadata,
plus timings of bin estimation and the padding report over 1M cuts.

Usage::

    flock /tmp/speech_ed_cpu.lock .venv/bin/python scripts/bench_padding.py --out exp/bench_padding
    ... --skip-1m          # only the LibriSpeech (and mix) tables
    ... --only-1m          # only stage 4 (after one full run)

Stages (each idempotent, artefacts under --out):
  1. import ../shared/data/librispeech/train-clean-100.tsv with ``speech-ed import-tsv``; train a 1024-piece
     tokenizer on its transcripts; measure (duration, decoder tokens) once.
  2. LibriSpeech table at --max-duration-s (default 600): every strategy, seeds 0..N-1, all in this run.
  3. A mix of corpora (LibriSpeech + Common Voice id/ps + Europarl-ST en->de translation), same strategies.
  4. 1M cuts: train-clean-100 replicated 35x with +-5 % jittered durations; wall time of the real CLI
     (estimate-bins and padding-report, lengths cold and cached) and of the in-process estimation/simulation.

Prints tables and writes ``<out>/bench_padding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_ed.sampling import (  # noqa: E402
    Lengths,
    estimate_bucket_bins,
    import_tsv,
    measure_lengths,
    simulate_epoch,
    simulate_lhotse_dynamic_bucketing,
)
from speech_ed.sampling.io import atomic_write_text  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "speech_ed.cli"]
# name -> (strategy, bin method, duration buckets, token sub-buckets); "lenient" promotes 2D misfits
CONFIGS = [
    ("random", "random", None, None, None),
    ("lhotse 1D x30", "lhotse", None, 30, None),
    ("1D equal x30", "1d", "equal", 30, None),
    ("1D dp x30", "1d", "dp", 30, None),
    ("2D equal 30x5", "2d", "equal", 30, 5),
    ("2D dp 30x5", "2d", "dp", 30, 5),
    ("2D dp 20x7", "2d", "dp", 20, 7),
    ("2D dp 20x7 len.", "2d-lenient", "dp", 20, 7),
    ("2D dp 15x10", "2d", "dp", 15, 10),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def tokenizer_for(cuts_paths: list[Path], out_dir: Path, languages: list[str]):
    """Train (once) a 1024-piece tokenizer on the decoder targets of the cuts."""
    from lhotse import CutSet

    from speech_ed.data.prompt import cut_target
    from speech_ed.data.tokenizer import Tokenizer

    if (out_dir / "tokenizer.model").is_file():
        return Tokenizer.load(out_dir)
    texts = [cut_target(c).text for p in cuts_paths for c in CutSet.from_file(p)]
    return Tokenizer.train(texts, out_dir, vocab_size=1024, languages=languages)


def lengths_of(cuts_paths: list[Path], tokenizer, cache: Path) -> Lengths:
    from lhotse import CutSet

    from speech_ed.data.prompt import count_decoder_tokens

    if cache.is_file():
        return Lengths.load(cache)
    parts = [measure_lengths(CutSet.from_file(p), lambda c: count_decoder_tokens(c, tokenizer))
             for p in cuts_paths]
    lengths = Lengths(np.concatenate([p.ids for p in parts]), np.concatenate([p.durations for p in parts]),
                      np.concatenate([p.tokens for p in parts]))
    lengths.save(cache)
    return lengths


def run_config(lengths: Lengths, strategy: str, method, num_buckets, sub_buckets, max_duration_s: float,
               seed: int) -> dict:
    if strategy == "lhotse":
        report, _ = simulate_lhotse_dynamic_bucketing(lengths, max_duration_s, num_buckets, seed=seed)
        return report
    bins = None
    if strategy != "random":  # 1d, 2d, 2d-lenient
        bins = estimate_bucket_bins(lengths.durations, lengths.tokens if sub_buckets else None, num_buckets,
                                    sub_buckets, method)
    report, _ = simulate_epoch(lengths, strategy.split("-")[0], bins, max_duration_s=max_duration_s,
                               seed=seed, strict=not strategy.endswith("lenient"))
    return report


def table(lengths: Lengths, max_duration_s: float, seeds: int, title: str) -> list[dict]:
    log(f"\n## {title}: {len(lengths)} cuts, {lengths.durations.sum() / 3600:.1f} h, "
        f"--max-duration-s {max_duration_s}, seeds 0..{seeds - 1} (mean; range in brackets)")
    log(f"{'config':<15}{'buckets':>8}{'batches':>16}{'mean bs':>9}{'input pad %':>18}{'output pad %':>18}"
        f"{'dropped':>8}{'promoted':>9}")
    rows = []
    for name, strategy, method, k, m in CONFIGS:
        reps = [run_config(lengths, strategy, method, k, m, max_duration_s, s) for s in range(seeds)]

        def agg(key, scale=1.0, reps=reps):
            v = np.array([r[key] for r in reps], dtype=float) * scale
            return float(v.mean()), float(v.min()), float(v.max())

        row = {"config": name, "strategy": strategy, "method": method,
               "num_buckets": reps[0].get("num_buckets", 1), "num_batches": agg("num_batches"),
               "mean_batch_size": agg("mean_batch_size"), "input_padding": agg("input_padding", 100),
               "output_padding": agg("output_padding", 100), "cuts_dropped": agg("cuts_dropped"),
               "tail_steps": agg("tail_steps") if "tail_steps" in reps[0] else None,
               "promoted": agg("promoted") if "promoted" in reps[0] else None}
        rows.append(row)
        b, i, o = row["num_batches"], row["input_padding"], row["output_padding"]
        log(f"{name:<15}{row['num_buckets']:>8}{b[0]:>8.0f} [{b[1]:.0f}-{b[2]:.0f}]"
            f"{row['mean_batch_size'][0]:>9.1f}{i[0]:>8.2f} [{i[1]:.2f}-{i[2]:.2f}]"
            f"{o[0]:>8.2f} [{o[1]:.2f}-{o[2]:.2f}]{row['cuts_dropped'][0]:>8.0f}"
            f"{(row['promoted'] or [0])[0]:>9.0f}")
    return rows


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed, proc.stdout


def stage_1m(out: Path, tok_dir: Path, copies: int, max_duration_s: float) -> dict:
    """Replicate train-clean-100 with jittered durations to ~1M cuts and time the real commands."""
    tsv, cuts = out / "ls100_x35.tsv", out / "ls100_x35_cuts.jsonl.gz"
    if not cuts.is_file():
        rng = np.random.default_rng(0)
        src = (DATA / "librispeech" / "train-clean-100.tsv").read_text(encoding="utf-8").splitlines()
        with open(tsv, "w", encoding="utf-8") as f:
            f.write(src[0] + "\n")
            for k in range(copies):
                for line in src[1:]:
                    cid, dur, text = line.split("\t")
                    f.write(f"{cid}-r{k}\t{float(dur) * rng.uniform(0.95, 1.05):.3f}\t{text}\n")
        t0 = time.perf_counter()
        import_tsv(tsv, cuts, language="en")
        log(f"1M: import-tsv {time.perf_counter() - t0:.1f} s")
        tsv.unlink()
    cache = out / "cache_1m"
    for p in cache.glob("*.npz"):
        p.unlink()
    tok = str(tok_dir)
    res = {}
    res["estimate_bins_cold_s"], txt = timed([*CLI, "estimate-bins", "--cuts", str(cuts), "--tokenizer", tok,
                                              "--num-buckets", "20", "--sub-buckets", "7", "--out",
                                              str(out / "bins_1m.yaml"), "--lengths-cache", str(cache)])
    log(txt)
    res["estimate_bins_warm_s"], txt = timed([*CLI, "estimate-bins", "--cuts", str(cuts), "--tokenizer", tok,
                                              "--num-buckets", "20", "--sub-buckets", "7", "--out",
                                              str(out / "bins_1m.yaml"), "--lengths-cache", str(cache)])
    log(txt)
    report = [*CLI, "padding-report", "--cuts", str(cuts), "--tokenizer", tok,
              "--bins", str(out / "bins_1m.yaml"), "--max-duration-s", str(max_duration_s),
              "--lengths-cache", str(cache)]
    res["padding_report_warm_s"], txt = timed([*report, "--strategy", "random", "1d", "2d",
                                               "--json", str(out / "padding_1m.json")])
    log(txt)
    res["padding_report_1m"] = json.loads((out / "padding_1m.json").read_text())["results"]
    for p in cache.glob("*.npz"):
        p.unlink()
    res["padding_report_cold_s"], txt = timed([*report, "--strategy", "2d"])
    log(txt)
    lengths = Lengths.load(next(cache.glob("*.npz")))
    for method in ("equal", "dp"):
        t0 = time.perf_counter()
        estimate_bucket_bins(lengths.durations, lengths.tokens, 20, 7, method)
        res[f"estimate_{method}_inprocess_s"] = time.perf_counter() - t0
    bins = estimate_bucket_bins(lengths.durations, lengths.tokens, 20, 7, "dp")
    for strategy in ("random", "1d", "2d"):
        t0 = time.perf_counter()
        simulate_epoch(lengths, strategy, None if strategy == "random" else bins,
                       max_duration_s=max_duration_s)
        res[f"simulate_{strategy}_inprocess_s"] = time.perf_counter() - t0
    res["num_cuts"] = int(len(lengths))
    log("1M timings (s): " + json.dumps({k: round(v, 2) for k, v in res.items() if k.endswith("_s")}))
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="exp/bench_padding")
    parser.add_argument("--max-duration-s", type=float, default=600.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=35, help="replicas of train-clean-100 for the 1M stage")
    parser.add_argument("--skip-1m", action="store_true")
    parser.add_argument("--skip-mix", action="store_true")
    parser.add_argument("--only-1m", action="store_true", help="only the 1M stage (needs stage 1's tokenizer)")
    args = parser.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.platform(),
              "cpus": os.cpu_count(), "max_duration_s": args.max_duration_s}

    if args.only_1m:
        if not (out / "tokenizer_1024").is_dir():
            raise SystemExit(f"--only-1m needs {out / 'tokenizer_1024'}: run once without it")
        args.skip_mix = True
    log("Stage 1: LibriSpeech train-clean-100 cuts, tokenizer, lengths")
    ls_cuts = out / "ls100_cuts.jsonl.gz"
    if not args.only_1m:
        if not ls_cuts.is_file():
            import_tsv(DATA / "librispeech" / "train-clean-100.tsv", ls_cuts, language="en")
        tok = tokenizer_for([ls_cuts], out / "tokenizer_1024", ["en"])
        ls = lengths_of([ls_cuts], tok, out / "lengths_ls100.npz")
        log("Stage 2: LibriSpeech table")
        result["librispeech"] = table(ls, args.max_duration_s, args.seeds, "LibriSpeech train-clean-100")

    if not args.skip_mix:
        log("Stage 3: mix of corpora")
        parts = [("librispeech/train-clean-100.tsv", "en", None),
                 ("commonvoice/cv19.0_id_train.tsv", "id", None),
                 ("commonvoice/cv18.0_ps_train.tsv", "ps", None),
                 ("europarl_st/europarl_st_v1.1_test_en-de.tsv", "en", "de")]
        paths = []
        for rel, lang, tgt in parts:
            p = out / f"mix_{Path(rel).stem}.jsonl.gz"
            if not p.is_file():
                import_tsv(DATA / rel, p, language=lang, task="translate" if tgt else "transcribe",
                           target_language=tgt)
            paths.append(p)
        mix_tok = tokenizer_for(paths, out / "tokenizer_mix_1024", ["en", "id", "ps", "de"])
        mix = lengths_of(paths, mix_tok, out / "lengths_mix.npz")
        title = "Mix: LS-100 + CV id + CV ps + Europarl en->de"
        result["mix"] = table(mix, args.max_duration_s, args.seeds, title)

    if not args.skip_1m:
        log("Stage 4: 1M cuts")
        result["one_million"] = stage_1m(out, out / "tokenizer_1024", args.copies, args.max_duration_s)
    previous = out / "bench_padding.json"  # keep sections a --skip-* run did not redo
    if previous.is_file():
        result = {**json.loads(previous.read_text()), **result}
    atomic_write_text(previous, json.dumps(result, indent=1) + "\n")
    log(f"\nwrote {out / 'bench_padding.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
