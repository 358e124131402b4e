"""Batched decoding of a split, WER per language and overall, and RTFx.

WER is computed with jiwer on both sides normalised by :func:`speech_ed.data.text.normalize_text`. RTFx is
audio seconds divided by the wall seconds of the whole transcription (audio loading, model, detokenising).
Results go to ``<run_dir>/results.json`` and ``<run_dir>/RESULTS.md`` (both written atomically).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict

import jiwer
import torch

from speech_ed.data.dataset import AEDDataset
from speech_ed.data.prompt import build_prompt
from speech_ed.data.text import normalize_text
from speech_ed.data.tokenizer import Tokenizer
from speech_ed.models import ctc_greedy_decode, greedy_decode


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


@torch.inference_mode()
def transcribe_cuts(model, tokenizer: Tokenizer, cuts, batch_size: int = 64, max_duration_s: float = 600.0,
                    beam_size: int = 1, length_penalty: float = 1.0, max_len_ratio: float = 0.6,
                    pnc: bool = False, dtype: torch.dtype | None = torch.bfloat16, with_ctc: bool = True) -> dict:
    """Decode every cut; returns ``{"rows": [...], "audio_seconds", "wall_seconds", "skipped"}``.

    Each row: ``{"id", "language", "ref", "hyp", "hyp_ctc"}`` (texts as the tokenizer decodes them).
    """
    dataset = AEDDataset(tokenizer, pnc=pnc, sample_rate=model.dims.sample_rate if hasattr(model, "dims") else 16000)
    device = next(model.parameters()).device
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None and dtype != torch.float32
                else contextlib.nullcontext())
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
        prompts = []
        for cid in batch["cut_ids"]:
            sup = by_id[cid].supervisions[0]
            custom = sup.custom or {}
            prompts.append(build_prompt(tokenizer, sup.language, custom.get("target_language", sup.language),
                                        custom.get("task", "transcribe"), pnc))
        prompt = torch.tensor(prompts, dtype=torch.long, device=device)
        with autocast:
            enc, enc_lens, ctc_logits = model.encode_with_ctc(audio, audio_lens)
            if beam_size > 1:
                from speech_ed.models import beam_search

                hyps = beam_search(model, enc, enc_lens, prompt, tokenizer.eos_id, beam_size=beam_size,
                                   length_penalty=length_penalty, max_len_ratio=max_len_ratio)
            else:
                hyps = greedy_decode(model, enc, enc_lens, prompt, tokenizer.eos_id, max_len_ratio=max_len_ratio)
            ctc_hyps = None
            if with_ctc and ctc_logits is not None:
                ctc_hyps = ctc_greedy_decode(ctc_logits, enc_lens, blank=tokenizer.pad_id)
        for i, cid in enumerate(batch["cut_ids"]):
            rows.append({"id": cid, "language": batch["languages"][i], "ref": batch["texts"][i],
                         "hyp": tokenizer.decode(hyps[i]),
                         "hyp_ctc": tokenizer.decode(ctc_hyps[i]) if ctc_hyps is not None else None})
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
             "| attention (WER %) | " + " | ".join(f"{w['per_language'][x]:.2f}" for x in langs)
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
