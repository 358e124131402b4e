"""WER per language and RTFx of several decoding modes on one trained run, through the evaluate path.

Usage::

    .venv/bin/python scripts/compare_decoding.py --run-dir exp/espeak_multilingual/dec --split dev \\
        --modes attention:mode=attention ctc:mode=ctc joint1:mode=joint,beam_size=1 \\
        joint4:mode=joint,beam_size=4,ctc_weight=0.3 --out exp/bench/decoding/dev.json
    .venv/bin/python scripts/compare_decoding.py --run-dir exp/espeak_multilingual/dec --split test \\
        --modes attention:mode=attention ctc:mode=ctc default:mode=auto --repeats 3 --out exp/bench/decoding/test.json

Each mode is ``NAME:field=value,...`` over :class:`speech_ed.config.EvalConfig` fields, applied on top of the
run's resolved config (``config.resolved.yaml``); every mode decodes the split with
:func:`speech_ed.evaluation.evaluate.transcribe_cuts`, exactly as ``speech-ed evaluate`` does (bf16 autocast
when the run trained in bf16, the run's ``trainer.num_threads``). RTFx = audio seconds / wall seconds of the
whole split (loading, model, detokenising); with ``--repeats N`` the modes are decoded in turn N times and the
fastest pass of each is kept, so the shared machine's noise hits every mode alike, and each mode's RTFx is
also given as a ratio to the first mode's, measured in the same run. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch


def parse_mode(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    values = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--modes {spec!r}: expected NAME:field=value,...")
        values[key] = value
    return name, values


def eval_config(base, values: dict):
    """``base`` (an EvalConfig) with string ``values`` cast to each field's type."""
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise SystemExit(f"unknown eval field {key!r}; one of {sorted(fields)}")
        current = getattr(base, key)
        changes[key] = value.lower() in ("1", "true") if isinstance(current, bool) else type(current)(value)
    return dataclasses.replace(base, **changes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split", default="dev", choices=["dev", "test"])
    p.add_argument("--modes", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    from lhotse import CutSet

    from speech_ed.atomic import atomic_write_json
    from speech_ed.config import load_config
    from speech_ed.data.datamodule import manifest_path
    from speech_ed.evaluation.decoding import decode_options
    from speech_ed.evaluation.evaluate import transcribe_cuts, wer_table
    from speech_ed.evaluation.model_io import load_for_inference
    from speech_ed.paths import RunPaths

    run = RunPaths.in_folder(a.run_dir)
    cfg = load_config([run.resolved_config], [f"eval.split={a.split}"])
    model, tokenizer = load_for_inference(run.model)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    cuts = CutSet.from_file(manifest_path(cfg, a.split)).to_eager()
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    modes = [parse_mode(m) for m in a.modes]
    options = {name: decode_options(eval_config(cfg.eval, values), has_ctc=model.ctc is not None)
               for name, values in modes}
    best: dict[str, dict] = {}
    for rep in range(a.repeats):
        for name, _ in modes:
            out = transcribe_cuts(model, tokenizer, cuts, batch_size=cfg.eval.batch_size,
                                  max_duration_s=cfg.data.max_duration_s * 4, pnc=cfg.tokenizer.pnc, dtype=dtype,
                                  options=options[name], with_ctc=False)
            if name not in best or out["wall_seconds"] < best[name]["wall_seconds"]:
                best[name] = out
            print(f"[{rep + 1}/{a.repeats}] {name}: {out['wall_seconds']:.2f} s", flush=True)
    rows = []
    first = modes[0][0]
    for name, values in modes:
        out = best[name]
        wer = wer_table(out["rows"], "hyp")
        rtfx = out["audio_seconds"] / max(out["wall_seconds"], 1e-9)
        rows.append({"name": name, "overrides": values, "decoding": options[name].describe(),
                     "options": dataclasses.asdict(options[name]), "wer": wer, "rtfx": round(rtfx, 1),
                     "wall_seconds": round(out["wall_seconds"], 3), "audio_seconds": round(out["audio_seconds"], 2)})
    base_rtfx = next(r["rtfx"] for r in rows if r["name"] == first)
    langs = list(rows[0]["wer"]["per_language"])
    print(f"\nsplit {a.split}, {len(cuts)} cuts, {torch.get_num_threads()} threads, best of {a.repeats}")
    print("| mode | decoding | " + " | ".join(langs) + " | macro | overall | RTFx | RTFx / " + first + " |")
    print("|---|---|" + "---|" * (len(langs) + 4))
    for r in rows:
        r["rtfx_ratio"] = round(r["rtfx"] / base_rtfx, 3)
        w = r["wer"]
        print(f"| {r['name']} | {r['decoding']} | " + " | ".join(f"{w['per_language'][x]:.2f}" for x in langs)
              + f" | {w['macro']:.2f} | {w['overall']:.2f} | {r['rtfx']:.1f} | {r['rtfx_ratio']:.2f} |")
    atomic_write_json(a.out, {"run_dir": str(run), "split": a.split, "modes": rows, "repeats": a.repeats,
                              "threads": torch.get_num_threads(), "machine": platform.platform(),
                              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
