"""OOMptimizer on a multilingual + translation mixture: per-bucket sizes vs the best single duration budget.

Usage::

    nice -n 5 .venv/bin/python scripts/bench_oomptimizer_mixture.py --out exp/bench_oomptimizer_mixture \\
        [--presets canary_1b canary_180m_flash] [--duration-buckets 16 --sub-buckets 3]

The mixture, from ../shared/data, every cut of each source once (no re-weighting):

* LibriSpeech train-clean-100: English transcription (28,539 cuts, 100.6 h);
* Common Voice 19.0 Indonesian and 18.0 Pashto, the splits that have text (train + dev + test): transcription;
* Europarl-ST v1.1 test, all 11 directions (en -> de, es, fr, it, nl, pt; de, es, fr, it, pt -> en): speech
  translation, the decoder target is the translation (the en -> X sets share English audio, as in a real
  multi-task mix).

Cuts come from ``speech_ed.sampling.tsv.import_tsv`` (what ``speech-ed import-tsv`` runs); decoder tokens
(prompt + text + end, normalised text unless ``--pnc``) from
``speech_ed.data.lengths.measure_manifest_lengths`` (what ``speech-ed estimate-bins`` runs) with one
SentencePiece tokenizer of ``--tokenizer-vocab`` pieces per target language, trained on that language's
targets (Canary's aggregate tokenizer is 1024 pieces per language); 2D bins from ``estimate_bucket_bins``
('dp', D x M buckets).

For each preset: the simulate probe for an 80 GB H100 (``--target-gpu h100-80gb``: 79.1 GiB x 0.9),
bf16-mixed, AdamW, second model copy resident, the model's own vocabulary;
``bench_oomptimizer_common.study`` finds the per-bucket sizes (every verdict traced: the allocator model,
started from the state after set-up, never reserves past the limit) and, under the same verdicts, the
largest single padding-aware budget ``batch size x longest cut <= max_duration_s`` whose epoch never exceeds
the limit, for the same 2D bins, for 30 equal-duration 1D buckets and for no bucketing. One epoch each
(seed 0); mean batch size and padding.

Prints the tables and writes ``<out>/bench_oomptimizer_mixture.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_oomptimizer_common import ROOT, GiB, epoch_table, log, simulate_judge, study  # noqa: E402

from speech_ed.config import load_model_preset  # noqa: E402
from speech_ed.data.lengths import measure_manifest_lengths  # noqa: E402
from speech_ed.data.prompt import PROMPT_LEN, target_of  # noqa: E402
from speech_ed.data.tokenizer import Tokenizer  # noqa: E402
from speech_ed.oomptimizer import GPU_MEMORY_GIB, StepSettings, bins_as_pairs, make_probe  # noqa: E402
from speech_ed.sampling import Lengths, estimate_bucket_bins, iter_tsv_rows  # noqa: E402
from speech_ed.sampling.io import atomic_write_text  # noqa: E402
from speech_ed.sampling.tsv import import_tsv  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EUROPARL = ["en-de", "en-es", "en-fr", "en-it", "en-nl", "en-pt", "de-en", "es-en", "fr-en", "it-en", "pt-en"]


def sources(data: Path = DATA) -> list[dict]:
    """(name, TSV files, source language, task, target language) of every part of the mixture."""
    out = [{"name": "librispeech_en", "files": [data / "librispeech" / "train-clean-100.tsv"],
            "language": "en", "task": "transcribe", "target": "en"}]
    for ver, lang in (("cv19.0", "id"), ("cv18.0", "ps")):
        files = [data / "commonvoice" / f"{ver}_{lang}_{split}.tsv" for split in ("train", "dev", "test")]
        out.append({"name": f"commonvoice_{lang}", "language": lang, "task": "transcribe", "target": lang,
                    "files": files})
    for pair in EUROPARL:
        src, tgt = pair.split("-")
        out.append({"name": f"europarl_{pair}", "language": src, "task": "translate", "target": tgt,
                    "files": [data / "europarl_st" / f"europarl_st_v1.1_test_{pair}.tsv"]})
    missing = [str(f) for s in out for f in s["files"] if not f.is_file()]
    if missing:
        raise SystemExit(f"--data-dir {data}: missing {missing}")
    return out


def manifests(out: Path, srcs: list[dict]) -> None:
    """One audio-less cut manifest per TSV (kept if already there); adds ``manifests`` to each source."""
    for s in srcs:
        s["manifests"] = []
        for f in s["files"]:
            path = out / "manifests" / f"{s['name']}.{f.stem}.jsonl.gz"
            if not path.is_file():
                target = s["target"] if s["task"] == "translate" else None
                import_tsv(f, path, s["language"], s["task"], target)
            s["manifests"].append(path)


def tokenizers(out: Path, srcs: list[dict], vocab: int, pnc: bool) -> dict[str, Path]:
    """One tokenizer per target language, trained on the mixture's targets in that language (kept if
    there)."""
    texts: dict[str, list[str]] = {}
    for s in srcs:
        for f in s["files"]:
            for r in iter_tsv_rows(f):
                custom = None
                if s["task"] == "translate":
                    custom = {"task": "translate", "translation": r["translation"],
                              "target_language": s["target"]}
                target = target_of(r["id"], r["text"], s["language"], custom, pnc)
                texts.setdefault(s["target"], []).append(target.text)
    dirs = {}
    languages = sorted({s["language"] for s in srcs} | set(texts))
    for lang, ts in sorted(texts.items()):
        d = out / "tokenizers" / f"{lang}_{vocab}{'_pnc' if pnc else ''}"
        if not (d / "tokenizer.model").is_file():
            Tokenizer.train(ts, d, vocab_size=vocab, languages=languages)
        dirs[lang] = d
    return dirs


def mixture_lengths(out: Path, srcs: list[dict], toks: dict[str, Path], pnc: bool, tag: str,
                    ) -> tuple[Lengths, np.ndarray]:
    """Lengths of every cut (ids prefixed by the source), and each cut's source index; cached."""
    cache = out / f"lengths_{tag}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return Lengths(z["ids"], z["durations"], z["tokens"]), z["source"]
    ids, durs, tokens, source = [], [], [], []
    for i, s in enumerate(srcs):
        for m in s["manifests"]:
            ln = measure_manifest_lengths(m, toks[s["target"]] / "tokenizer.model", pnc, progress=False)
            ids += [f"{s['name']}/{x}" for x in ln.ids]
            durs.append(ln.durations)
            tokens.append(ln.tokens)
            source += [i] * len(ln)
    lengths = Lengths(np.asarray(ids, dtype=str), np.concatenate(durs), np.concatenate(tokens))
    src = np.asarray(source, dtype=np.int64)
    tmp = cache.with_name(f".{cache.name}.tmp.npz")
    np.savez(tmp, ids=lengths.ids, durations=lengths.durations, tokens=lengths.tokens, source=src)
    tmp.replace(cache)
    return lengths, src


def subsample(lengths: Lengths, src: np.ndarray, n: int) -> tuple[Lengths, np.ndarray]:
    """``n`` cuts drawn without replacement (seed 0), in manifest order (for quick runs)."""
    keep = np.sort(np.random.default_rng(0).choice(len(lengths), size=n, replace=False))
    return Lengths(lengths.ids[keep], lengths.durations[keep], lengths.tokens[keep]), src[keep]


def source_table(lengths: Lengths, src: np.ndarray, srcs: list[dict]) -> list[dict]:
    """Per source: cuts, hours, and text tokens per second (prompt and end excluded)."""
    rows = []
    for i, s in enumerate(srcs):
        sel = src == i
        if not sel.any():
            continue
        tps = (lengths.tokens[sel] - PROMPT_LEN - 1) / lengths.durations[sel]
        rows.append({"source": s["name"], "task": s["task"], "target": s["target"], "cuts": int(sel.sum()),
                     "hours": round(float(lengths.durations[sel].sum()) / 3600, 2),
                     "max_s": round(float(lengths.durations[sel].max()), 2),
                     "tps_median": round(float(np.median(tps)), 2),
                     "tps_p90": round(float(np.quantile(tps, 0.9)), 2),
                     "max_tokens": int(lengths.tokens[sel].max())})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exp/bench_oomptimizer_mixture")
    ap.add_argument("--data-dir", default=str(DATA), help="the shared metadata (default: %(default)s)")
    ap.add_argument("--presets", nargs="+", default=["canary_1b", "canary_180m_flash"])
    ap.add_argument("--target-gpu", default="h100-80gb", choices=sorted(GPU_MEMORY_GIB))
    ap.add_argument("--memory-budget-gib", type=float, default=None, help="default: the target GPU's memory")
    ap.add_argument("--memory-fraction", type=float, default=0.9)
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--tokenizer-vocab", type=int, default=1024, help="pieces per target-language tokenizer")
    ap.add_argument("--pnc", action="store_true", help="count punctuated, cased targets")
    ap.add_argument("--duration-buckets", type=int, default=16)
    ap.add_argument("--sub-buckets", type=int, default=3)
    ap.add_argument("--rel-gap", type=float, default=0.05)
    ap.add_argument("--max-cuts", type=int, default=None, help="subsample the mixture (quick runs)")
    ap.add_argument("--vocab-size", type=int, default=None, help="logit size (default: each preset's)")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    torch.manual_seed(0)

    srcs = sources(Path(args.data_dir))
    manifests(out, srcs)
    toks = tokenizers(out, srcs, args.tokenizer_vocab, args.pnc)
    tag = f"v{args.tokenizer_vocab}{'_pnc' if args.pnc else ''}"
    lengths, src = mixture_lengths(out, srcs, toks, args.pnc, tag)
    if args.max_cuts and args.max_cuts < len(lengths):
        lengths, src = subsample(lengths, src, args.max_cuts)
    table = source_table(lengths, src, srcs)
    log(f"mixture: {len(lengths)} cuts, {lengths.durations.sum() / 3600:.1f} h, max "
        f"{lengths.durations.max():.2f} s, {lengths.tokens.max()} tokens")
    log(f"{'source':<18} {'task':<10} {'tgt':>3} {'cuts':>6} {'hours':>7} {'max_s':>6} {'tps_med':>7} "
        f"{'tps_p90':>7} {'max_tok':>7}")
    for r in table:
        log(f"{r['source']:<18} {r['task']:<10} {r['target']:>3} {r['cuts']:>6} {r['hours']:>7.2f} "
            f"{r['max_s']:>6.2f} {r['tps_median']:>7.2f} {r['tps_p90']:>7.2f} {r['max_tokens']:>7}")
    bins = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets=args.duration_buckets,
                                num_subbuckets=args.sub_buckets, method="dp")
    bins_1d = estimate_bucket_bins(lengths.durations, num_buckets=30, method="equal")
    pairs = bins_as_pairs(bins)
    label = f"2D {args.duration_buckets}x{args.sub_buckets}"
    specs = [(f"{label} bins + one max_duration_s", "2d", bins, None),
             ("1D x30 + one max_duration_s", "1d", bins_1d, None),
             ("no bucketing + one max_duration_s", "random", None, None)]

    results = {}
    for preset in args.presets:
        dims = load_model_preset(preset)
        if args.vocab_size:
            dims = replace(dims, vocab_size=args.vocab_size)
        settings = StepSettings(precision=args.precision, ctc_weight=0.3 if dims.ctc_head else 0.0)
        probe = make_probe("simulate", dims, settings, args.memory_budget_gib, args.memory_fraction,
                           target_gpu=args.target_gpu)
        judge = simulate_judge(probe)
        log(f"\n== {preset} (V={dims.vocab_size}), {probe.device_name}, limit "
            f"{probe.limit_bytes / GiB:.2f} GiB, {len(pairs)} buckets")
        t0 = time.perf_counter()
        res = study(lengths, bins, judge, specs, args.rel_gap)
        res.pop("model")
        log(f"\nfound sizes ({preset}): bucket: max s, max tokens -> B (B x max s)")
        for r in res["buckets"]:
            log(f"  {r['bucket']:3d}: {r['max_duration_s']:6.2f} s {r['max_tokens']:4d} tok -> "
                f"B={r['batch_size']:5d} ({r['batch_size'] * r['max_duration_s']:.0f} s; fails at "
                f"{r['smallest_failure']}, peak {r['peak_gib']} GiB)")
        log(f"\nepoch of the mixture (seed 0), {preset}, limit {probe.limit_bytes / GiB:.2f} GiB")
        epoch_table(f"{label} + OOMptimizer sizes (traced)", res["ours"], res["baselines"])
        res.update({"device": probe.device_name, "limit_gib": round(probe.limit_bytes / GiB, 3),
                    "vocab_size": dims.vocab_size, "traces": judge.traces,
                    "seconds": round(time.perf_counter() - t0, 1)})
        results[preset] = res

    log("\nsummary: mean batch size, ours / best single budget")
    for preset, res in results.items():
        best = max(res["baselines"], key=lambda b: b["mean_batch_size"])
        ours = res["ours"]
        log(f"  {preset}: ours {ours['mean_batch_size']:.2f} (padding in {ours['input_padding']:.2%} / out "
            f"{ours['output_padding']:.2%}); best single budget: {best['label']} "
            f"D={best['max_duration_s']} -> {best['mean_batch_size']:.2f} (padding in "
            f"{best['input_padding']:.2%} / out {best['output_padding']:.2%}); ratio "
            f"{ours['mean_batch_size'] / best['mean_batch_size']:.2f}")
    total_s = time.perf_counter() - t_all
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": str(torch.__version__), "sources": table, "cuts": len(lengths),
              "hours": round(float(lengths.durations.sum()) / 3600, 2),
              "tokenizer_vocab": args.tokenizer_vocab,
              "pnc": args.pnc, "bins": pairs, "precision": args.precision, "results": results,
              "total_seconds": round(total_s, 1)}
    atomic_write_text(out / "bench_oomptimizer_mixture.json", json.dumps(report, indent=1, default=float))
    log(f"wrote {out / 'bench_oomptimizer_mixture.json'} (total {total_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
