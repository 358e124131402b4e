"""``speech-ed evaluate --config C.yaml [key=value ...]``: decode a split with the run's model.pt.

Writes ``<run_dir>/results.json`` and ``<run_dir>/RESULTS.md`` and prints the WER table.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
from lhotse import CutSet

from speech_ed.config import ExperimentConfig, load_config


def evaluate(cfg: ExperimentConfig, model_path: str | Path | None = None) -> dict:
    from speech_ed.data.datamodule import manifest_path
    from speech_ed.atomic import atomic_write_json, atomic_write_text
    from speech_ed.evaluation.evaluate import results_markdown, transcribe_cuts, wer_table
    from speech_ed.evaluation.model_io import load_for_inference

    run_dir = cfg.run_dir
    model, tokenizer = load_for_inference(model_path or run_dir / "model.pt")
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    cuts = CutSet.from_file(manifest_path(cfg, cfg.eval.split)).to_eager()
    e = cfg.eval
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    out = transcribe_cuts(model, tokenizer, cuts, batch_size=e.batch_size, max_duration_s=cfg.data.max_duration_s * 4,
                          beam_size=e.beam_size, length_penalty=e.length_penalty, max_len_ratio=e.max_len_ratio,
                          pnc=cfg.tokenizer.pnc, dtype=dtype)
    rows = out["rows"]
    train_stats_path = run_dir / "train_stats.json"
    results = {
        "recipe": cfg.recipe, "run": cfg.run, "split": e.split, "num_utterances": len(rows),
        "audio_seconds": round(out["audio_seconds"], 2), "wall_seconds": round(out["wall_seconds"], 2),
        "rtfx": round(out["audio_seconds"] / max(out["wall_seconds"], 1e-9), 2),
        "decoding": f"beam {e.beam_size}" if e.beam_size > 1 else "greedy",
        "device": f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads",
        "wer": wer_table(rows, "hyp"), "wer_ctc": wer_table(rows, "hyp_ctc"),
        "skipped": out["skipped"],
        "train": json.loads(train_stats_path.read_text()) if train_stats_path.is_file() else {},
        "examples": [{"ref": r["ref"], "hyp": r["hyp"]} for r in rows[:: max(1, len(rows) // 8)][:8]],
    }
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_json(run_dir / "hypotheses.json", rows)
    atomic_write_text(run_dir / "RESULTS.md", results_markdown(results))
    print(results_markdown(results))
    return results


def add_arguments(parser):
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    parser.add_argument("--model", default=None, help="model.pt (default: <run_dir>/model.pt)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")


def main(args) -> int:
    evaluate(load_config(args.config, args.overrides), args.model)
    return 0
