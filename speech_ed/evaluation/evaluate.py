"""Batched decoding of a split, WER per language and overall, and RTFx.

WER is computed with jiwer on both sides normalised by :func:`speech_ed.data.text.normalize_text`. RTFx is
audio seconds divided by the wall seconds of the whole transcription (audio loading, model, detokenising).
Results go to ``<run_dir>/results.json`` and ``<run_dir>/RESULTS.md`` (both written atomically).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter, defaultdict

import jiwer
import torch

from speech_ed.data.dataset import AEDDataset
from speech_ed.data.prompt import build_prompt
from speech_ed.data.text import normalize_text
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.evaluation.decoding import decode_audio
from speech_ed.models.decoding import DecodeOptions


def batches_by_duration(cuts, max_cuts: int, max_duration_s: float):
    """Sort cuts by duration (longest first) and group them so that cuts x longest <= max_duration_s."""
    cuts = sorted(cuts, key=lambda c: -c.duration)
    batch = []
    for cut in cuts:
        if batch and (len(batch) + 1 > max_cuts or (len(batch) + 1) * batch[0].duration > max_duration_s):
            yield batch
            batch = []
        batch.append(cut)
    if batch:
        yield batch


def cut_prompt(tokenizer: Tokenizer, cut, pnc: bool) -> list[int]:
    """The decoder prompt of a cut: its language, target language and task (transcribe by default)."""
    sup = cut.supervisions[0]
    custom = sup.custom or {}
    return build_prompt(tokenizer, sup.language, custom.get("target_language", sup.language),
                        custom.get("task", "transcribe"), pnc)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.inference_mode()
def transcribe_cuts(model, tokenizer: Tokenizer, cuts, batch_size: int = 64, max_duration_s: float = 600.0,
                    beam_size: int = 1, length_penalty: float = 1.0, max_len_ratio: float = 0.6,
                    pnc: bool = False, dtype: torch.dtype | None = torch.bfloat16, with_ctc: bool = True,
                    options: DecodeOptions | None = None) -> dict:
    """Decode every cut; returns ``{"rows": [...], "audio_seconds", "wall_seconds", "skipped"}``.

    Each row: ``{"id", "language", "ref", "hyp", "hyp_ctc"}`` (texts as the tokenizer decodes them).
    ``options`` say how to decode (:func:`speech_ed.evaluation.decoding.decode_audio`); without them,
    attention decoding with ``beam_size``, ``length_penalty`` and ``max_len_ratio``.
    """
    if options is None:
        options = DecodeOptions(mode="attention", beam_size=beam_size, length_penalty=length_penalty,
                                max_len_ratio=max_len_ratio)
    dataset = AEDDataset(tokenizer, pnc=pnc, sample_rate=model.dims.sample_rate if hasattr(model, "dims") else 16000)
    device = next(model.parameters()).device
    rows, skipped, audio_s = [], Counter(), 0.0
    t0 = time.perf_counter()
    for cuts_batch in batches_by_duration(list(cuts), batch_size, max_duration_s):
        batch = dataset[cuts_batch]
        skipped.update(batch["skipped"])
        if not batch["cut_ids"]:
            continue
        audio, audio_lens = batch["audio"].to(device), batch["audio_lens"].to(device)
        audio_s += audio_lens.sum().item() / dataset.sample_rate
        by_id = {c.id: c for c in cuts_batch}
        prompt = torch.tensor([cut_prompt(tokenizer, by_id[cid], pnc) for cid in batch["cut_ids"]],
                              dtype=torch.long, device=device)
        with _autocast(device, dtype):
            out = decode_audio(model, audio, audio_lens, prompt, tokenizer.eos_id, tokenizer.pad_id, options,
                               with_ctc=with_ctc)
        for i, cid in enumerate(batch["cut_ids"]):
            rows.append({"id": cid, "language": batch["languages"][i], "ref": batch["texts"][i],
                         "hyp": tokenizer.decode(out.hyps[i]),
                         "hyp_ctc": tokenizer.decode(out.ctc_hyps[i]) if out.ctc_hyps is not None else None})
    wall = time.perf_counter() - t0
    return {"rows": rows, "audio_seconds": audio_s, "wall_seconds": wall, "skipped": dict(skipped)}


def wer_table(rows: list[dict], key: str = "hyp") -> dict:
    """Corpus WER (percent) per language, their macro average and the pooled ('overall') WER."""
    by_lang = defaultdict(lambda: ([], []))
    for r in rows:
        if r.get(key) is None:
            continue
        ref = normalize_text(r["ref"])
        if not ref:
            continue
        by_lang[r["language"]][0].append(ref)
        by_lang[r["language"]][1].append(normalize_text(r[key]))
    table = {lang: round(100 * jiwer.wer(refs, hyps), 2) for lang, (refs, hyps) in sorted(by_lang.items())}
    if not table:
        return {}
    all_refs = [x for refs, _ in by_lang.values() for x in refs]
    all_hyps = [x for _, hyps in by_lang.values() for x in hyps]
    return {"per_language": table, "macro": round(sum(table.values()) / len(table), 2),
            "overall": round(100 * jiwer.wer(all_refs, all_hyps), 2),
            "utterances": {lang: len(refs) for lang, (refs, _) in sorted(by_lang.items())}}


def results_markdown(results: dict) -> str:
    """The human-readable RESULTS.md of a run."""
    w, c = results["wer"], results.get("wer_ctc") or {}
    langs = list(w.get("per_language", {}))
    lines = [f"# Results: {results['recipe']} / {results['run']}", "",
             f"Split `{results['split']}`, {results['num_utterances']} utterances, "
             f"{results['audio_seconds']:.0f} s of audio, decoding: {results['decoding']}.", "",
             "| decoder | " + " | ".join(langs) + " | macro | overall |",
             "|---|" + "---|" * (len(langs) + 2),
             f"| {results['decoding']} (WER %) | " + " | ".join(f"{w['per_language'][x]:.2f}" for x in langs)
             + f" | {w['macro']:.2f} | {w['overall']:.2f} |"]
    if c:
        lines.append("| CTC greedy (WER %) | " + " | ".join(f"{c['per_language'][x]:.2f}" for x in langs)
                     + f" | {c['macro']:.2f} | {c['overall']:.2f} |")
    lines += ["", f"RTFx (audio seconds / wall seconds of the whole transcription): **{results['rtfx']:.1f}** "
              f"on {results['device']}.", "",
              f"Skipped at evaluation: {results['skipped'] or 'none'}. Training: {results.get('train', {})}", ""]
    examples = results.get("examples", [])
    if examples:
        lines += ["Examples (reference / hypothesis):", ""]
        lines += [f"- `{e['ref']}` / `{e['hyp']}`" for e in examples]
    return "\n".join(lines) + "\n"


def evaluate_split(cfg, model_path=None) -> dict:
    """Decode ``cfg.eval.split`` with the run's ``model.pt`` as ``cfg.eval`` says; write and return the results.

    Writes ``<run_dir>/results.json``, ``hypotheses.json`` and ``RESULTS.md`` (atomically) and prints the table.
    """
    import json
    import platform

    from lhotse import CutSet

    from speech_ed.atomic import atomic_write_json, atomic_write_text
    from speech_ed.data.datamodule import manifest_path
    from speech_ed.evaluation.decoding import decode_options
    from speech_ed.evaluation.model_io import load_for_inference
    from speech_ed.paths import RunPaths

    paths = RunPaths.from_config(cfg)
    model, tokenizer = load_for_inference(model_path or paths.model)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    cuts = CutSet.from_file(manifest_path(cfg, cfg.eval.split)).to_eager()
    e = cfg.eval
    options = decode_options(e, has_ctc=getattr(model, "ctc", None) is not None)
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    out = transcribe_cuts(model, tokenizer, cuts, batch_size=e.batch_size, max_duration_s=cfg.data.max_duration_s * 4,
                          pnc=cfg.tokenizer.pnc, dtype=dtype, options=options)
    rows = out["rows"]
    train_stats_path = paths.train_stats
    results = {
        "recipe": cfg.recipe, "run": cfg.run, "split": e.split, "num_utterances": len(rows),
        "audio_seconds": round(out["audio_seconds"], 2), "wall_seconds": round(out["wall_seconds"], 2),
        "rtfx": round(out["audio_seconds"] / max(out["wall_seconds"], 1e-9), 2),
        "decoding": options.describe(), "decode_options": dataclasses.asdict(options),
        "device": f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads",
        "wer": wer_table(rows, "hyp"), "wer_ctc": wer_table(rows, "hyp_ctc"),
        "skipped": out["skipped"],
        "train": json.loads(train_stats_path.read_text()) if train_stats_path.is_file() else {},
        "examples": [{"ref": r["ref"], "hyp": r["hyp"]} for r in rows[:: max(1, len(rows) // 8)][:8]],
    }
    atomic_write_json(paths.results, results)
    atomic_write_json(paths.hypotheses(), rows)
    atomic_write_text(paths.results_markdown, results_markdown(results))
    print(results_markdown(results))
    return results
