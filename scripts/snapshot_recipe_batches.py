"""What a recipe run would train on, without training: its bins, batch sizes and first N training batches.

Usage::

    .venv/bin/speech-ed recipe espeak_multilingual --stop-stage 2 run=snap      # prepare, tokenizer, bins
    .venv/bin/python scripts/snapshot_recipe_batches.py --config recipes/espeak_multilingual/config.yaml \\
        --steps 50 --out exp/snap_before.json run=snap
    ... (change the code) ...
    .venv/bin/python scripts/snapshot_recipe_batches.py ... --out exp/snap_after.json run=snap --compare exp/snap_before.json

Builds the training data module exactly as ``speech-ed train`` does (same config, tokenizer, inputs, sampler)
and writes the sha256 of the bins and batch-size files, the first ``--steps`` batches' cut ids and buckets, and
each batch's padded shapes. ``--compare`` exits with status 1 and names the first difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_ed.atomic import atomic_write_text  # noqa: E402
from speech_ed.config import load_config  # noqa: E402


def digest(path: str) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def snapshot(config: str, overrides: list[str], steps: int) -> dict:
    from speech_ed.data.datamodule import AEDDataModule
    from speech_ed.data.tokenizer import Tokenizer
    from speech_ed.paths import RunPaths

    cfg = load_config([config], overrides)
    tokenizer = Tokenizer.load(RunPaths.from_config(cfg).tokenizer_model)
    dm = AEDDataModule(cfg, tokenizer)
    dm.prepare_data()
    sampler = dm.build_train_sampler()
    sampler.set_epoch(0)
    batches = []
    for k, cuts in enumerate(sampler):
        if k == steps:
            break
        batch = dm.dataset[cuts]
        batches.append({"bucket": sampler.last_bucket, "cut_ids": list(batch["cut_ids"]),
                        "audio": list(batch["audio"].shape), "tokens": list(batch["tokens"].shape)})
    return {"bins_sha256": digest(cfg.data.bucket_bins), "batch_sizes_sha256": digest(cfg.data.bucket_batch_sizes),
            "tokenizer_sha256": digest(str(tokenizer.model_path)), "steps": len(batches), "batches": batches}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--compare", default=None, help="an earlier snapshot that this one must equal")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    snap = snapshot(args.config, args.overrides, args.steps)
    atomic_write_text(args.out, json.dumps(snap, indent=1))
    print(f"snapshot: {snap['steps']} batches, bins {snap['bins_sha256']}, batch sizes {snap['batch_sizes_sha256']}"
          f" -> {args.out}")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        for key in ("bins_sha256", "batch_sizes_sha256", "tokenizer_sha256", "steps"):
            if old[key] != snap[key]:
                print(f"snapshot: {key} differs: {old[key]} != {snap[key]}")
                return 1
        for k, (a, b) in enumerate(zip(old["batches"], snap["batches"])):
            if a != b:
                print(f"snapshot: batch {k} differs: {a} != {b}")
                return 1
        print(f"snapshot: identical to {args.compare}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
