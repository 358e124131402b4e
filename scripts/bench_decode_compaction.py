"""Finished-row compaction: decoding time of today's decoder vs the compacting one, on the same batches.

Usage::

    .venv/bin/python scripts/bench_decode_compaction.py --out exp/bench/compaction            # ~5 min, CPU
    .venv/bin/python scripts/bench_decode_compaction.py --presets small --batch-sizes 32 --num-utterances 64

Output lengths are real: each utterance of a seeded subset of LibriSpeech test-clean (``../shared/data``) gets
its duration (encoder frames = duration / 80 ms) and ``round(--tokens-per-second x duration)`` output tokens.
The decoder is randomly initialised, so the lengths are imposed: greedy rows generate exactly their length
(``force_lengths``: EOS ignored), beam-search rows have it as their token budget (every beam ends there). The
encoder output is random (the encoder does not take part in what is compared). Batches are formed as
evaluation forms them (sorted by duration, longest first: ``--order sorted``) or in manifest order
(``--order shuffled``, e.g. transcribing files as given), which leaves a wider spread of lengths per batch.

Compared on every batch: ``baseline`` (today's decoder, the frozen copy in tests/models/decoding_baseline.py),
``compact`` (speech_ed.models.decoding, finished rows dropped from the batch and the KV caches) and
``no-compact`` (the same code with compaction off). The outputs of all three must be identical (the script
stops otherwise). Times are the fastest of ``--repeats`` passes, the three interleaved within each pass (which
one runs first rotates from batch to batch: the first run on a batch was measured slower), so the shared
machine's noise hits them alike; the table gives compact / baseline as a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TSV = REPO.parent / "shared/data/librispeech/test-clean.tsv"
PROMPT_LEN, EOS = 5, 2


def load_baseline():
    spec = importlib.util.spec_from_file_location("decoding_baseline", REPO / "tests/models/decoding_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_lengths(path: Path, num: int, tokens_per_second: float, seed: int) -> list[tuple[float, int]]:
    """(duration s, output tokens) of a seeded subset of the TSV, in file order."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        di = header.index("duration_seconds")
        for line in f:
            d = float(line.rstrip("\n").split("\t")[di])
            rows.append((d, max(1, round(tokens_per_second * d))))
    g = torch.Generator().manual_seed(seed)
    index = sorted(torch.randperm(len(rows), generator=g)[:num].tolist()) if 0 < num < len(rows) else range(len(rows))
    return [rows[i] for i in index]


def make_batches(utts, batch_size: int, order: str):
    if order == "sorted":
        utts = sorted(utts, key=lambda u: -u[0])
    return [utts[i : i + batch_size] for i in range(0, len(utts), batch_size)]


@contextlib.contextmanager
def baseline_limits(baseline, limits: torch.Tensor):
    """Give today's beam search these per-row token budgets (it derives them from enc_lens otherwise)."""
    original = baseline.max_new_tokens
    baseline.max_new_tokens = lambda enc_lens, ratio: limits
    try:
        yield
    finally:
        baseline.max_new_tokens = original


def batch_inputs(model, batch, seed: int, dtype: torch.dtype):
    frames = torch.tensor([max(1, int(d / 0.08)) for d, _ in batch])
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(batch), int(frames.max()), model.dims.decoder_dim, generator=g).to(dtype)
    tokens = torch.tensor([min(n, model.dims.max_decoder_positions - PROMPT_LEN) for _, n in batch])
    prompt = torch.ones(len(batch), PROMPT_LEN, dtype=torch.long)
    return enc, frames, tokens, prompt


def run(kind: str, variant: str, model, baseline, enc, frames, tokens, prompt, beam: int):
    from speech_ed.models import beam_search, greedy_decode

    if kind == "greedy":
        if variant == "baseline":
            return baseline.greedy_decode(model, enc, frames, prompt, EOS, force_lengths=tokens)
        return greedy_decode(model, enc, frames, prompt, EOS, force_lengths=tokens, compact=variant == "compact")
    if variant == "baseline":
        with baseline_limits(baseline, tokens):
            return baseline.beam_search(model, enc, frames, prompt, EOS, beam_size=beam)
    return beam_search(model, enc, frames, prompt, EOS, beam_size=beam, limits=tokens,
                       compact=variant == "compact")


def bench(model, baseline, batches, kind: str, beam: int, repeats: int, dtype) -> dict:
    variants = ("baseline", "compact", "no-compact")
    best = {v: float("inf") for v in variants}
    for rep in range(repeats + 1):  # pass 0 warms up
        seconds = dict.fromkeys(variants, 0.0)
        for bi, batch in enumerate(batches):
            enc, frames, tokens, prompt = batch_inputs(model, batch, bi, dtype)
            outs = {}
            shift = (bi + rep) % len(variants)  # rotate who runs first: the first run of a batch pays more
            for v in variants[shift:] + variants[:shift]:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    outs[v] = run(kind, v, model, baseline, enc, frames, tokens, prompt, beam)
                seconds[v] += time.perf_counter() - t0
            for v in variants[1:]:
                if outs[v] != outs["baseline"]:
                    raise SystemExit(f"{kind}: batch {bi}: '{v}' differs from the baseline's output")
        if rep:
            best = {v: min(best[v], seconds[v]) for v in variants}
    tokens = sum(n for b in batches for _, n in b)
    spread = [max(n for _, n in b) / max(1, sum(n for _, n in b) / len(b)) for b in batches]
    return {"seconds": best, "ratio_compact_vs_baseline": best["compact"] / best["baseline"],
            "identical": True, "output_tokens": tokens, "batches": len(batches),
            "mean_max_over_mean_tokens": sum(spread) / len(spread)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="exp/bench/compaction")
    p.add_argument("--presets", nargs="+", default=["small", "twin_32x4"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 128])
    p.add_argument("--num-utterances", type=int, default=256)
    p.add_argument("--orders", nargs="+", default=["sorted", "shuffled"], choices=["sorted", "shuffled"])
    p.add_argument("--kinds", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--beam-utterances", type=int, default=128, help="beam search decodes the first N only")
    p.add_argument("--tokens-per-second", type=float, default=5.0, help="5 ~ a 1024-piece English BPE")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="bf16 casts the weights")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 on a shared machine (2 threads under contention ran 30x slower here)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cuts", default=str(TSV))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import dataclasses

    from speech_ed.config import load_model_preset
    from speech_ed.models import AEDModel

    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    baseline = load_baseline()
    utts = load_lengths(Path(a.cuts), a.num_utterances, a.tokens_per_second, a.seed)
    results = []
    header = f"{'preset':>10} {'kind':>6} {'order':>8} {'batch':>5} {'baseline s':>10} {'compact s':>9} " \
             f"{'no-compact s':>12} {'compact/base':>12} {'max/mean U':>10}"
    print(f"{len(utts)} utterances of {a.cuts}, {a.tokens_per_second} tokens/s, dtype {a.dtype}, "
          f"{torch.get_num_threads()} threads\n{header}", flush=True)
    for preset in a.presets:
        torch.manual_seed(a.seed)
        dims = dataclasses.replace(load_model_preset(preset), vocab_size=1024)
        model = AEDModel(dims).eval().to(dtype)
        for kind in a.kinds:
            for order in a.orders:
                for bs in a.batch_sizes:
                    pool = utts if kind == "greedy" else utts[: a.beam_utterances]
                    r = bench(model, baseline, make_batches(pool, bs, order), kind, a.beam_size, a.repeats, dtype)
                    r.update(preset=preset, kind=kind, order=order, batch_size=bs,
                             beam_size=a.beam_size if kind == "beam" else 1, utterances=len(pool))
                    results.append(r)
                    write_json(Path(a.out), results, a)  # after every row: a stopped run keeps what it measured
                    s = r["seconds"]
                    print(f"{preset:>10} {kind:>6} {order:>8} {bs:>5} {s['baseline']:>10.2f} {s['compact']:>9.2f} "
                          f"{s['no-compact']:>12.2f} {r['ratio_compact_vs_baseline']:>12.2f} "
                          f"{r['mean_max_over_mean_tokens']:>10.2f}", flush=True)
    print(f"wrote {Path(a.out) / 'compaction.json'}")
    return 0


def write_json(out: Path, results: list, a) -> None:
    from speech_ed.atomic import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compaction.json", {
        "results": results, "args": vars(a), "torch": torch.__version__, "machine": platform.platform(),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})


if __name__ == "__main__":
    raise SystemExit(main())
