"""WER and RTFx on several named test sets (e.g. LibriSpeech dev-clean, test-clean, test-other), and W&B.

Usage::

    results = evaluate_sets(cfg, {"test-clean": RunPaths.from_config(cfg).manifest("test-clean"), ...})

Writes ``<run_dir>/results.json`` (one entry per set: utterances, audio seconds, WER of the attention decoder
and of CTC greedy when the model has a CTC head, RTFx), ``hypotheses_<set>.json`` and ``RESULTS.md``. With
``trainer.logger=wandb`` the figures also go to a W&B run ``<recipe>/<run>/eval`` in the group
``<recipe>/<run>`` (offline when no API key is configured), as ``eval/<set>/wer`` and ``eval/<set>/rtfx``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import torch

from speech_ed.atomic import atomic_write_json, atomic_write_text
from speech_ed.config import ExperimentConfig
from speech_ed.paths import RunPaths
from speech_ed.wandb_mode import wandb_mode


def inference_device(cfg: ExperimentConfig) -> str:
    """'cuda' when a GPU is visible and the config does not ask for the CPU, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"


def describe_device(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} GPU"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def evaluate_sets(cfg: ExperimentConfig, sets: dict[str, str | Path],
                  model_path: str | Path | None = None) -> dict:
    """Decode every set with the run's ``model.pt``; write and return the results (see the module docstring).

    Raises:
        FileNotFoundError: the model or a set's manifest does not exist.
    """
    from lhotse import CutSet

    from speech_ed.evaluation.decoding import decode_options
    from speech_ed.evaluation.evaluate import transcribe_cuts, wer_table
    from speech_ed.evaluation.model_io import load_for_inference

    missing = [str(p) for p in sets.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"test set manifests missing: {missing} (run the recipe's manifests stage)")
    paths, e = RunPaths.from_config(cfg), cfg.eval
    device = inference_device(cfg)
    model, tokenizer = load_for_inference(model_path or paths.model, device=device)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    options = decode_options(e, has_ctc=getattr(model, "ctc", None) is not None)
    per_set = {}
    for name, path in sets.items():
        cuts = CutSet.from_file(path).to_eager()
        out = transcribe_cuts(model, tokenizer, cuts, batch_size=e.batch_size,
                              max_duration_s=cfg.data.max_duration_s * 4, pnc=cfg.tokenizer.pnc, dtype=dtype,
                              options=options)
        rows = out["rows"]
        wer, wer_ctc = wer_table(rows, "hyp"), wer_table(rows, "hyp_ctc")
        per_set[name] = {
            "num_utterances": len(rows), "audio_seconds": round(out["audio_seconds"], 2),
            "wall_seconds": round(out["wall_seconds"], 2),
            "rtfx": round(out["audio_seconds"] / max(out["wall_seconds"], 1e-9), 2),
            "wer": wer.get("overall"), "wer_ctc": wer_ctc.get("overall"), "skipped": out["skipped"],
            "examples": [{"ref": r["ref"], "hyp": r["hyp"]} for r in rows[:: max(1, len(rows) // 4)][:4]],
        }
        atomic_write_json(paths.hypotheses(name), rows)
        print(f"evaluate: {name}: {len(rows)} utterances, WER {per_set[name]['wer']}%, "
              f"RTFx {per_set[name]['rtfx']}", flush=True)
    train_stats = paths.train_stats
    results = {"recipe": cfg.recipe, "run": cfg.run, "model_preset": cfg.model_preset,
               "decoding": options.describe(),
               "device": describe_device(device), "sets": per_set,
               "train": json.loads(train_stats.read_text()) if train_stats.is_file() else {}}
    atomic_write_json(paths.results, results)
    atomic_write_text(paths.results_markdown, sets_markdown(results))
    print(sets_markdown(results))
    if cfg.trainer.logger == "wandb":
        log_results_to_wandb(cfg, results)
    return results


def sets_markdown(results: dict) -> str:
    """RESULTS.md of a multi-set evaluation: one row per set."""
    lines = [f"# Results: {results['recipe']} / {results['run']}", "",
             (f"Model preset `{results['model_preset']}`, decoding: {results['decoding']}, "
              f"on {results['device']}."),
             "", "| set | utterances | hours | WER % | CTC WER % | RTFx |", "|---|---|---|---|---|---|"]
    for name, r in results["sets"].items():
        ctc = f"{r['wer_ctc']:.2f}" if r["wer_ctc"] is not None else "-"
        wer = f"{r['wer']:.2f}" if r["wer"] is not None else "-"
        lines.append(f"| {name} | {r['num_utterances']} | {r['audio_seconds'] / 3600:.2f} | {wer} | {ctc} "
                     f"| {r['rtfx']:.1f} |")
    lines += ["", ("RTFx: audio seconds / wall seconds of the whole transcription "
                   "(loading, model, detokenising)."),
              f"Training: {results.get('train') or 'no train_stats.json'}", ""]
    return "\n".join(lines)


def log_results_to_wandb(cfg: ExperimentConfig, results: dict) -> str:
    """Log ``eval/<set>/wer``, ``wer_ctc`` and ``rtfx`` to the W&B run ``<recipe>/<run>/eval``.

    A separate run, because training and evaluation are separate stages (often separate jobs); its name
    starts with the training run's name (``<recipe>/<run>``), so one W&B filter shows both. Returns the run's
    local folder.
    """
    import wandb  # heavy, optional: only imported here

    run = wandb.init(project=cfg.trainer.wandb_project, name=f"{cfg.recipe}/{cfg.run}/eval",
                     group=f"{cfg.recipe}/{cfg.run}", job_type="eval", dir=str(cfg.run_dir),
                     config=dataclasses.asdict(cfg), mode=wandb_mode(),
                     reinit="create_new")
    metrics = {}
    for name, r in results["sets"].items():
        for key in ("wer", "wer_ctc", "rtfx", "num_utterances", "audio_seconds"):
            if r.get(key) is not None:
                metrics[f"eval/{name}/{key}"] = r[key]
    run.log(metrics)
    run.summary.update(metrics)
    folder = str(Path(run.dir).parent)
    run.finish()
    return folder
