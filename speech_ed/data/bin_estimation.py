"""Estimate bucket bins for a manifest or a run: lengths (cached), both estimators, the better one written.

Usage::

    lengths, provenance = load_lengths("cuts.jsonl.gz", "exp/ls/run/tokenizer", pnc=False, cache_dir=DEFAULT_CACHE)
    bins = estimate_and_save(lengths, provenance, num_buckets=30, sub_buckets=5, method="both",
                             tps_sigmas=4.0, max_duration_s=None, out="bucket_bins.yaml")
    estimate_bins_for_config(cfg, "bins.yaml", num_buckets=30, sub_buckets=5)   # the config's training mix
    estimate_bins_for_run(cfg)                       # recipe stage: <data.bucket_bins>, kept when it exists

Both estimators run by default ('equal' = the known method, 'dp' = minimum padding); the one with less padding
is written and the comparison is printed and kept in the YAML. Without ``max_duration_s`` padding is the bound
to each bucket's upper edge; with it, one simulated epoch of the sampler decides.

Token counts come from :func:`speech_ed.data.prompt.count_decoder_tokens` (prompt + text + end-of-text), the
same count training uses. They are cached per (manifest, tokenizer, prompt) under ``cache_dir``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from speech_ed.sampling.assignment import BucketAssigner, count_statuses
from speech_ed.sampling.bins import ESTIMATION_METHODS, BucketBins, estimate_bucket_bins
from speech_ed.sampling.io import save_bucket_bins
from speech_ed.sampling.lengths import Lengths, file_digest, lengths_cache_key
from speech_ed.sampling.simulate import simulate_epoch

DEFAULT_CACHE = Path(os.environ.get("SPEECH_ED_CACHE", Path.home() / ".cache" / "speech_ed")) / "lengths"
"""Default folder of the cached (duration, tokens) arrays (``$SPEECH_ED_CACHE/lengths``)."""


def load_lengths(cuts: str | os.PathLike, tokenizer_path: str | os.PathLike, pnc: bool = False,
                 cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> tuple[Lengths, dict[str, Any]]:
    """Measure (or read from the cache) every cut's duration and decoder tokens.

    Args:
        cuts: cut manifest (.jsonl.gz); audio-less cuts are fine.
        tokenizer_path: tokenizer folder or ``tokenizer.model``.
        pnc: count tokens of punctuated, cased targets.
        cache_dir: folder of cached lengths; None neither reads nor writes the cache.

    Returns:
        ``(lengths, provenance)`` where provenance names the tokenizer and the prompt format counted.
    """
    from speech_ed.data.lengths import measure_manifest_lengths
    from speech_ed.data.prompt import describe_prompt_format
    from speech_ed.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(tokenizer_path)
    prompt = describe_prompt_format(pnc)
    tok_digest = file_digest(tokenizer.model_path)
    provenance = {"tokenizer": {"path": str(tokenizer.model_path), "sha256_16": tok_digest,
                                "vocab_size": tokenizer.vocab_size},
                  "prompt": prompt, "cuts": str(cuts)}
    cache: Path | None = None
    if cache_dir is not None:
        key = lengths_cache_key(cuts, tok_digest, json.dumps(prompt, sort_keys=True))
        cache = Path(cache_dir) / f"{Path(cuts).name}.{key}.npz"
    cached = cache is not None and cache.is_file()
    start = time.perf_counter()
    if cached:
        lengths = Lengths.load(cache)
    else:
        lengths = measure_manifest_lengths(cuts, tokenizer.model_path, pnc)
        if cache is not None:
            lengths.save(cache)
    provenance["lengths_seconds"] = round(time.perf_counter() - start, 3)
    provenance["lengths_cached"] = cached
    if len(lengths) == 0:
        raise ValueError(f"{cuts} holds no cuts")
    return lengths, provenance


def padding_bound(bins: BucketBins, lengths: Lengths, strict: bool = True) -> dict[str, Any]:
    """Padding if every cut were padded to its bucket's upper bounds, plus what the bins drop."""
    assigner = BucketAssigner(bins, strict=strict)
    tokens = lengths.tokens if bins.is_2d else np.zeros_like(lengths.tokens)
    buckets, statuses = assigner.assign_many(lengths.durations, tokens)
    kept = buckets[buckets >= 0]
    upper_d = np.asarray(bins.durations)[kept]
    out = {"input": float(1 - lengths.durations[buckets >= 0].sum() / max(float(upper_d.sum()), 1e-9)),
           "output": None, "dropped": count_statuses(statuses)}
    if bins.is_2d:
        upper_t = np.asarray(bins.tokens)[kept]
        out["output"] = float(1 - lengths.tokens[buckets >= 0].sum() / max(int(upper_t.sum()), 1))
    return out


def estimate(lengths: Lengths, num_buckets: int, sub_buckets: int | None, methods: list[str],
             tps_sigmas: float, max_duration_s: float | None, seed: int = 0,
             ) -> tuple[BucketBins, list[dict]]:
    """Estimate bins with each method, score them, and return the best with the comparison rows."""
    rows, candidates = [], {}
    for method in methods:
        start = time.perf_counter()
        bins = estimate_bucket_bins(lengths.durations, lengths.tokens, num_buckets, sub_buckets, method,
                                    tps_sigmas)
        row: dict[str, Any] = {"method": method, "num_buckets": bins.num_buckets,
                               "seconds": round(time.perf_counter() - start, 3)}
        bound = padding_bound(bins, lengths)
        row["bound_input_padding"], row["bound_output_padding"] = bound["input"], bound["output"]
        row["dropped"] = bound["dropped"]
        if max_duration_s is not None:
            strategy = "2d" if bins.is_2d else "1d"
            report, _ = simulate_epoch(lengths, strategy, bins, max_duration_s=max_duration_s, seed=seed)
            row.update({k: report[k] for k in ("input_padding", "output_padding", "num_batches")})
        row["score"] = (row.get("input_padding", row["bound_input_padding"])
                        + (row.get("output_padding", row["bound_output_padding"]) or 0.0))
        rows.append(row)
        candidates[method] = bins
    best = min(rows, key=lambda r: r["score"])
    return candidates[best["method"]], rows


def estimate_and_save(lengths: Lengths, provenance: dict[str, Any], num_buckets: int, sub_buckets: int | None,
                      method: str, tps_sigmas: float, max_duration_s: float | None, out) -> BucketBins:
    """Estimate bins on ``lengths`` with each method, keep the better, write them with their provenance and
    print the comparison table."""
    if num_buckets < 1 or (sub_buckets is not None and sub_buckets < 1):
        raise ValueError("--num-buckets and --sub-buckets must be >= 1")
    start = time.perf_counter()
    methods = list(ESTIMATION_METHODS) if method == "both" else [method]
    bins, rows = estimate(lengths, num_buckets, sub_buckets, methods, tps_sigmas, max_duration_s)
    chosen = next(r for r in rows if r["method"] == bins.method)
    dropped = chosen["dropped"]
    bins.metadata.update(provenance)
    bins.metadata.update({
        "num_cuts": int(len(lengths)), "hours": round(float(lengths.durations.sum()) / 3600, 3),
        "requested": {"num_buckets": num_buckets, "sub_buckets": sub_buckets, "method": method,
                      "tps_sigmas": tps_sigmas},
        "dropped": dropped,
        "num_dropped": int(sum(dropped.get(k, 0) for k in ("too_long", "too_many_tokens", "tps_outlier"))),
        "padding_bound": {"input": chosen["bound_input_padding"], "output": chosen["bound_output_padding"]},
        "comparison": [{k: v for k, v in r.items() if k != "dropped"} for r in rows],
    })
    save_bucket_bins(out, bins)
    print(f"estimate-bins: {len(lengths)} cuts, lengths in {provenance['lengths_seconds']} s "
          f"({ {True: 'cached', False: 'measured', None: 'indexed'}[provenance['lengths_cached']]}), "
          f"estimation in {time.perf_counter() - start:.2f} s")
    print(f"{'method':<8}{'buckets':>8}{'bound in':>10}{'bound out':>10}{'sim in':>9}{'sim out':>9}"
          f"{'batches':>9}")

    def pct(x):
        return f"{100 * x:.2f}%" if x is not None else "-"

    for r in rows:
        print(f"{r['method']:<8}{r['num_buckets']:>8}{pct(r['bound_input_padding']):>10}"
              f"{pct(r['bound_output_padding']):>10}{pct(r.get('input_padding')):>9}"
              f"{pct(r.get('output_padding')):>9}{r.get('num_batches', '-'):>9}")
    print(f"estimate-bins: kept '{bins.method}' ({bins.num_buckets} buckets, would drop "
          f"{bins.metadata['num_dropped']} cuts: {dropped or 'none'}) -> {out}")
    return bins


def estimate_bins_for_manifest(cuts: str | os.PathLike, tokenizer_path: str | os.PathLike, out, num_buckets: int,
                               sub_buckets: int | None = None, method: str = "both", tps_sigmas: float = 4.0,
                               max_duration_s: float | None = None, pnc: bool = False,
                               cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> BucketBins:
    """Bins over one manifest: :func:`load_lengths`, then :func:`estimate_and_save` to ``out``."""
    lengths, provenance = load_lengths(cuts, tokenizer_path, pnc, cache_dir)
    return estimate_and_save(lengths, provenance, num_buckets, sub_buckets, method, tps_sigmas, max_duration_s, out)


def mix_lengths(cfg, tokenizer) -> tuple[Lengths, dict[str, Any]]:
    """Lengths of one epoch of the config's training mix (``data.inputs`` with their weights; default the
    run's ``cuts_train.jsonl.gz``), without the cuts the sampler would skip, and their provenance."""
    from speech_ed.data.datamodule import training_sources
    from speech_ed.data.prompt import describe_prompt_format
    from speech_ed.sampling.index import REASONS
    from speech_ed.sampling.mix import CorpusMix

    start = time.perf_counter()
    sources = training_sources(cfg, tokenizer)
    weights = [i.weight for i in cfg.data.inputs] if cfg.data.inputs and cfg.data.inputs[0].weight else None
    mix = CorpusMix([s.index for s in sources], weights, cfg.data.cuts_per_epoch)
    seq = mix.epoch(0, cfg.data.seed, shuffle=False)
    ok = seq.status == 0
    lengths = Lengths(np.arange(int(ok.sum())).astype(str), seq.durations[ok], seq.tokens[ok])
    provenance = {"tokenizer": {"path": str(tokenizer.model_path), "sha256_16": file_digest(tokenizer.model_path),
                                "vocab_size": tokenizer.vocab_size},
                  "prompt": describe_prompt_format(cfg.tokenizer.pnc),
                  "inputs": [{"name": s.name, "cuts": len(s.index), "epoch_cuts": n, "weight": w}
                             for s, n, w in zip(sources, mix.counts, mix.weights)],
                  "skipped": {REASONS[int(k)]: int(v) for k, v in zip(*np.unique(seq.status[~ok], return_counts=True))},
                  "lengths_seconds": round(time.perf_counter() - start, 3), "lengths_cached": None}
    if len(lengths) == 0:
        raise ValueError("the training inputs hold no cut that can train")
    return lengths, provenance


def estimate_bins_for_config(cfg, out, num_buckets: int, sub_buckets: int | None = None, method: str = "both",
                             tps_sigmas: float = 4.0, max_duration_s: float | None = None,
                             tokenizer_path: str | os.PathLike | None = None) -> BucketBins:
    """Bins over one epoch of the config's training mix (see :func:`mix_lengths`), written to ``out``.

    The tokenizer is ``tokenizer_path``, else the run's (:attr:`speech_ed.paths.RunPaths.tokenizer_model`).
    """
    from speech_ed.data.tokenizer import Tokenizer
    from speech_ed.paths import RunPaths

    tokenizer = Tokenizer.load(tokenizer_path or RunPaths.from_config(cfg).tokenizer_model)
    lengths, provenance = mix_lengths(cfg, tokenizer)
    return estimate_and_save(lengths, provenance, num_buckets, sub_buckets, method, tps_sigmas, max_duration_s,
                             out)


def estimate_bins_for_run(cfg, sub_buckets: int | None = None, method: str = "both", tps_sigmas: float = 4.0) -> None:
    """Recipe stage: 2D bins of the run's training mix, written to ``data.bucket_bins``.

    Idempotent: an existing bins file is kept. Duration buckets come from ``cfg.data.num_buckets`` (token
    sub-buckets from ``sub_buckets``, else ``cfg.data.num_sub_buckets``), the tokenizer is the run's; methods
    are scored by a simulated epoch under ``cfg.data.max_duration_s``.
    """
    from speech_ed.paths import RunPaths

    out = RunPaths.from_config(cfg).bucket_bins
    if out.is_file():
        print(f"estimate-bins: {out} exists, kept")
        return
    estimate_bins_for_config(cfg, out, cfg.data.num_buckets, sub_buckets or cfg.data.num_sub_buckets, method,
                             tps_sigmas, cfg.data.max_duration_s)
