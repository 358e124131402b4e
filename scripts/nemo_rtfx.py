"""RTFx of NeMo's ``transcribe`` vs speech_ed's greedy and beam decoding: same weights, same CPU, one process.

Usage (in the venv with nemo-toolkit, see scripts/nemo_parity.py)::

    nice -n 5 /work/nemo_venv/bin/python scripts/nemo_rtfx.py --shapes tiny_canary flash180m --out exp/nemo_rtfx

For each shape it builds the NeMo model once (scripts/nemo_parity.py: random init, then Adam steps of NeMo's
own forward on the benchmark audio so decoding stops at end-of-text like a trained model), imports the .nemo
into speech_ed (speech_ed.nemo, no NeMo code) and times, alternating, ``repeats`` times each:

* NeMo greedy: ``model.transcribe(files, batch_size=B)`` with decoding strategy 'greedy';
* NeMo beam: the same with strategy 'beam', beam_size 4, no length penalty;
* ours greedy / beam 4 (no length penalty): read the same wav files, log-mel + encoder, KV-cache decoding,
  detokenize, on the same batches (files sorted by duration, B per batch, as NeMo's dataloader takes them).

RTFx = audio seconds / best wall time of the repeats. Transcripts are compared token for token. Prints a
markdown table and writes ``OUT/rtfx.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nemo_parity import REPO, build_shape, decoding_config, sentences
from nemo_shapes import SHAPES

sys.path.insert(0, str(REPO))


def bench_utterances(shape: dict, per_language: int) -> list[tuple[str, str]]:
    """Fortune sentences, ``per_language`` per language of the shape (deterministic): 8-20 words, or 5-9 for a
    decoder of 64 positions (its 128-piece tokenizers spend about 3 tokens per word)."""
    low, high = (5, 9) if shape["decoder"]["max_len"] <= 64 else (8, 20)
    out = []
    for lang in shape["languages"]:
        picked = [s for s in sentences(lang, 4000) if low <= len(s.split()) <= high][::97][:per_language]
        out += [(lang, s) for s in picked]
    return out


def nemo_transcribe(model, files: list[str], batch: int, slots: dict, beam: int) -> list[list[int]]:
    cfg = decoding_config("greedy") if beam == 1 else decoding_config("beam", beam)
    if beam > 1:
        cfg["beam"]["length_penalty"] = 0.0  # NeMo 3.0.0 reads 'length_penalty', not the dataclass' len_pen
    model.change_decoding_strategy(cfg)
    hyps = model.transcribe(files, batch_size=batch, return_hypotheses=True, verbose=False, **slots)
    return [[int(i) for i in h.y_sequence] for h in hyps]


@torch.no_grad()
def ours_transcribe(model, tokenizer, files: list[str], batch: int, slots: dict, beam: int) -> list[list[int]]:
    from speech_ed.models import beam_search, greedy_decode
    from speech_ed.nemo.parity import prompt_from_slots

    prompt_ids = prompt_from_slots(tokenizer, slots)
    cap = model.dims.max_decoder_positions - len(prompt_ids)
    out = []
    for start in range(0, len(files), batch):
        waves = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files[start : start + batch]]
        lens = torch.tensor([w.numel() for w in waves])
        audio = torch.zeros(len(waves), int(lens.max()))
        for i, w in enumerate(waves):
            audio[i, : w.numel()] = w
        enc, enc_lens = model.encode(audio, lens)
        prompt = torch.tensor([prompt_ids] * len(waves))
        if beam == 1:
            hyps = greedy_decode(model, enc, enc_lens, prompt, tokenizer.eos_id,
                                 max_len_ratio=float(model.dims.max_decoder_positions))
        else:  # the position cap as every row's budget, so a runaway beam ends there like NeMo's
            hyps = beam_search(model, enc, enc_lens, prompt, tokenizer.eos_id, beam_size=beam, length_penalty=0.0,
                               limits=torch.full((len(waves),), cap))
        for h in hyps:
            tokenizer.decode(h)  # detokenization is part of NeMo's transcribe too
        out += hyps
    return out


def strip(ids: list[int], pad: int, eos: int) -> list[int]:
    while ids and ids[-1] in (pad, eos):
        ids = ids[:-1]
    return ids


def bench_shape(name: str, out: Path, batch: int, repeats: int, per_language: int, rebuild: bool) -> list[dict]:
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from speech_ed.nemo import load_nemo

    shape = SHAPES[name]
    if rebuild or not (out / name / "model.nemo").is_file():
        build_shape(name, out, utterances=bench_utterances(shape, per_language))
    files = sorted((str(p) for p in (out / name / "audio").glob("*.wav")), key=lambda f: -sf.info(f).frames)
    audio_s = sum(sf.info(f).duration for f in files)
    nemo = EncDecMultiTaskModel.restore_from(str(out / name / "model.nemo"), map_location="cpu").eval()
    ours = load_nemo(out / name / "model.nemo")
    slots = dict(shape["prompt_slots"])
    pad, eos = ours.tokenizer.pad_id, ours.tokenizer.eos_id
    from speech_ed.nemo.parity import prompt_from_slots

    cap = ours.dims.max_decoder_positions - len(prompt_from_slots(ours.tokenizer, slots))
    systems = {
        ("greedy", "nemo"): lambda: nemo_transcribe(nemo, files, batch, slots, 1),
        ("greedy", "ours"): lambda: ours_transcribe(ours.model, ours.tokenizer, files, batch, slots, 1),
        ("beam 4", "nemo"): lambda: nemo_transcribe(nemo, files, batch, slots, 4),
        ("beam 4", "ours"): lambda: ours_transcribe(ours.model, ours.tokenizer, files, batch, slots, 4),
    }
    nemo_transcribe(nemo, files[:1], 1, slots, 1)  # warm-up (allocator, lazy imports, dataloader setup)
    ours_transcribe(ours.model, ours.tokenizer, files[:1], 1, slots, 1)
    times = {k: [] for k in systems}
    results = {}
    for _ in range(repeats):
        for key, run in systems.items():
            start = time.perf_counter()
            results[key] = [strip(list(h), pad, eos) for h in run()]
            times[key].append(time.perf_counter() - start)
    rows = []
    for decoding in ("greedy", "beam 4"):
        theirs, mine = results[(decoding, "nemo")], results[(decoding, "ours")]
        t_nemo, t_ours = min(times[(decoding, "nemo")]), min(times[(decoding, "ours")])
        rows.append({"shape": name, "decoding": decoding, "utterances": len(files), "audio_s": round(audio_s, 2),
                     "batch_size": batch, "nemo_s": round(t_nemo, 3), "ours_s": round(t_ours, 3),
                     "nemo_rtfx": round(audio_s / t_nemo, 2), "ours_rtfx": round(audio_s / t_ours, 2),
                     "speedup": round(t_nemo / t_ours, 2), "identical": sum(a == b for a, b in zip(theirs, mine)),
                     # NeMo's beam search emits one token more than ours when a hypothesis hits the position cap
                     "identical_but_last_at_cap": sum(a[:-1] == b and len(a) == cap + 1 for a, b in zip(theirs, mine)),
                     "tokens_nemo": sum(map(len, theirs)), "tokens_ours": sum(map(len, mine)),
                     "all_times_s": {"nemo": times[(decoding, "nemo")], "ours": times[(decoding, "ours")]},
                     "parameters": sum(p.numel() for p in nemo.parameters())})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny_canary", "flash180m"], choices=sorted(SHAPES))
    parser.add_argument("--out", type=Path, default=REPO / "exp" / "nemo_rtfx")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--per-language", type=int, default=2, help="benchmark utterances per language")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the models even if OUT/SHAPE exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.shapes:
        rows += bench_shape(name, args.out, args.batch_size, args.repeats, args.per_language, args.rebuild)
    header = ("| shape | params | decoding | utterances (audio s) | NeMo transcribe s (RTFx) | ours s (RTFx) | "
              "speed-up | identical transcripts | tokens NeMo / ours |")
    print(header + "\n|" + "---|" * 9)
    for r in rows:
        print(f"| {r['shape']} | {r['parameters'] / 1e6:.1f} M | {r['decoding']} | {r['utterances']} "
              f"({r['audio_s']:.1f}) | {r['nemo_s']:.2f} ({r['nemo_rtfx']:.1f}) | {r['ours_s']:.2f} "
              f"({r['ours_rtfx']:.1f}) | {r['speedup']:.2f}x | {r['identical']}/{r['utterances']}"
              + (f" (+{r['identical_but_last_at_cap']} but NeMo's extra token at the cap)"
                 if r["identical_but_last_at_cap"] else "") + " | "
              f"{r['tokens_nemo']} / {r['tokens_ours']} |")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "nemo": __import__("nemo").__version__, "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rtfx.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
