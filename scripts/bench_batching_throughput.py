"""Training throughput of the efficiency study's strategies, taken in turn inside one process.

Usage::

    python scripts/bench_batching_throughput.py --study-dir exp/espeak_multilingual/cal1/efficiency \
        --strategies random,lhotse,2d-oomptimizer --slices 8 --steps-per-slice 15

The efficiency study trains its strategies one after another, 12 minutes each, so a change in the load of a
shared machine between runs shows up as a difference between strategies. Here every strategy's real batches
(its run's resolved config: sampler, budget or per-bucket sizes, DataLoader workers; the sampler's epoch 1, so
2D batches are 2D and not SortaGrad's warm-up) train one model in round-robin slices of ``--steps-per-slice``
steps, and each slice's time is split into waiting for data, encoder forward (frontend, subsampling,
conformer; up to the encoder-decoder projection), decoder forward (projection, decoder, CTC head), loss,
backward and optimizer step. The first slice
of every strategy is a warm-up and is not counted. Ratios are given per round (the strategies' slices of one
round ran back to back) as median and range. Prints a Markdown table and writes ``bench_batching.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_ed.atomic import atomic_write_json  # noqa: E402
from speech_ed.config import load_config  # noqa: E402
from speech_ed.data.datamodule import AEDDataModule  # noqa: E402
from speech_ed.data.dataset import split_decoder_io  # noqa: E402
from speech_ed.data.tokenizer import Tokenizer  # noqa: E402
from speech_ed.models.aed import compute_loss  # noqa: E402
from speech_ed.paths import RunPaths  # noqa: E402
from speech_ed.training.module import AEDLightningModule  # noqa: E402

PARTS = ("data", "encoder", "decoder", "loss", "backward", "optimizer")


class Strategy:
    """One strategy's batches (its run's config) and its running totals."""

    def __init__(self, name: str, run_dir: Path):
        self.name = name
        self.cfg = load_config([str(RunPaths.in_folder(run_dir).resolved_config)], [])
        self.tokenizer = Tokenizer.load(self.cfg.tokenizer.path)
        self.dm = AEDDataModule(self.cfg, self.tokenizer)
        loader = self.dm.train_dataloader()
        self.dm.sampler.set_epoch(1)  # past SortaGrad's first epoch: the strategy's own batches
        self.batches = iter(loader)
        self.slices: list[dict] = []

    def next_batch(self) -> dict:
        return next(self.batches)


def train_slice(strategy: Strategy, model, optimizer, steps: int, cfg) -> dict:
    """``steps`` optimizer steps on the strategy's next batches; seconds per part, audio seconds, cuts."""
    t = dict.fromkeys(PARTS, 0.0)
    audio = padded = cuts = 0.0
    encoder_done: list[float] = []  # the forward's split: the projection after the encoder starts the decoder side
    hook = model.projection.register_forward_pre_hook(lambda *_: encoder_done.append(time.perf_counter()))
    sr = cfg.model.sample_rate
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = strategy.next_batch()
        t1 = time.perf_counter()
        tokens_in, targets = split_decoder_io(batch["tokens"], batch["token_lens"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.trainer.precision.startswith("bf16")):
            out = model(batch["audio"], batch["audio_lens"], tokens_in)
            t2, t3 = encoder_done[-1], time.perf_counter()
            loss, _ = compute_loss(out, targets, batch["ctc_targets"], batch["ctc_target_lens"],
                                   label_smoothing=cfg.loss.label_smoothing, ctc_weight=cfg.loss.ctc_weight)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        for part, (a, b) in zip(PARTS, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6))):
            t[part] += b - a
        audio += float(batch["audio_lens"].sum()) / sr
        padded += batch["audio"].shape[0] * batch["audio"].shape[1] / sr
        cuts += batch["audio"].shape[0]
    hook.remove()
    return {"seconds": t, "audio_s": audio, "padded_s": padded, "cuts": cuts, "steps": steps}


def summarize(strategy: Strategy) -> dict:
    counted = strategy.slices[1:]
    wall = sum(sum(s["seconds"].values()) for s in counted)
    steps = sum(s["steps"] for s in counted)
    out = {"steps": steps, "wall_s": round(wall, 2),
           "audio_s_per_s": sum(s["audio_s"] for s in counted) / wall,
           "padded_audio_s_per_s": sum(s["padded_s"] for s in counted) / wall,
           "mean_batch": sum(s["cuts"] for s in counted) / steps,
           "ms_per_step": {p: 1000 * sum(s["seconds"][p] for s in counted) / steps for p in PARTS}}
    out["ms_per_step"]["total"] = 1000 * wall / steps
    return out


def slice_speed(s: dict) -> float:
    return s["audio_s"] / sum(s["seconds"].values())


def loading_cost(strategy: Strategy, num_cuts: int = 320, chunk: int = 16) -> float:
    """CPU seconds the dataset (audio reading, tokenizing, collating) spends per audio second, in this process."""
    from lhotse import CutSet

    from speech_ed.sampling.stream import open_manifest

    cuts = list(open_manifest(Path(strategy.cfg.data.manifest_dir) / "cuts_train.jsonl.gz").subset(first=num_cuts))
    audio, t0 = sum(c.duration for c in cuts), time.process_time()
    for i in range(0, len(cuts), chunk):
        strategy.dm.dataset[CutSet.from_cuts(cuts[i:i + chunk])]
    return (time.process_time() - t0) / audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study-dir", default="exp/espeak_multilingual/cal1/efficiency")
    ap.add_argument("--strategies", default="random,lhotse,2d-oomptimizer")
    ap.add_argument("--slices", type=int, default=8, help="rounds; the first is a warm-up")
    ap.add_argument("--steps-per-slice", type=int, default=15)
    ap.add_argument("--out", default=None, help="folder for bench_batching.json (default: --study-dir)")
    args = ap.parse_args()
    study = Path(args.study_dir)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    missing = [n for n in names if not RunPaths.in_folder(study / n).resolved_config.is_file()]
    if missing:
        sys.exit(f"no finished efficiency-study run for {missing} under {study}; run `speech-ed efficiency-study`")
    strategies = [Strategy(n, study / n) for n in names]
    cfg = strategies[0].cfg
    torch.manual_seed(cfg.seed)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    module = AEDLightningModule(dataclasses.asdict(cfg), strategies[0].tokenizer.vocab_size)
    model = module.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)  # a small lr: speed, not learning
    for r in range(args.slices):
        for s in strategies:
            s.slices.append(train_slice(s, model, optimizer, args.steps_per_slice, cfg))
        print(f"round {r + 1}/{args.slices}: " + ", ".join(
            f"{s.name} {slice_speed(s.slices[-1]):.1f} audio s/s" for s in strategies), flush=True)
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} CPU x "
              f"{torch.get_num_threads()} threads", "command": " ".join(sys.argv), "preset": cfg.model_preset,
              "precision": cfg.trainer.precision, "strategies": {s.name: summarize(s) for s in strategies},
              "ratios": {}}
    result["loading_cpu_s_per_audio_s"] = loading_cost(strategies[0])
    base = strategies[-1]
    for s in strategies[:-1]:
        per_round = [slice_speed(a) / slice_speed(b) for a, b in zip(base.slices[1:], s.slices[1:])]
        result["ratios"][f"{base.name}/{s.name}"] = {"median": statistics.median(per_round),
                                                     "min": min(per_round), "max": max(per_round)}
    print(f"\n{result['machine']}, {result['date']}, preset {cfg.model_preset}, {cfg.trainer.precision}, "
          f"{args.slices - 1} rounds x {args.steps_per_slice} steps counted per strategy\n")
    print("| strategy | mean batch | audio s / s | padded audio s / s | ms per step: " + " / ".join(PARTS)
          + " = total |")
    print("|---|---|---|---|---|")
    for name, r in result["strategies"].items():
        ms = r["ms_per_step"]
        print(f"| {name} | {r['mean_batch']:.1f} | {r['audio_s_per_s']:.1f} | {r['padded_audio_s_per_s']:.1f} | "
              + " / ".join(f"{ms[p]:.0f}" for p in PARTS) + f" = {ms['total']:.0f} |")
    print()
    for key, v in result["ratios"].items():
        print(f"audio s / s, {key}: median {v['median']:.2f}x per round (range {v['min']:.2f}-{v['max']:.2f})")
    cost = result["loading_cpu_s_per_audio_s"]
    print(f"loading (dataset, one process): {1000 * cost:.2f} CPU ms per audio second, i.e. "
          + ", ".join(f"{name} {100 * cost * r['audio_s_per_s'] / torch.get_num_threads():.1f} %"
                      for name, r in result["strategies"].items()) + " of the cores at their training speed")
    out = Path(args.out) if args.out else study
    atomic_write_json(out / "bench_batching.json", result)
    print(f"wrote {out / 'bench_batching.json'}")


if __name__ == "__main__":
    main()
