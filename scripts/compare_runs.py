"""Compare two training runs step by step: did they see the same batches, and how far apart are their losses?

Made for equal-work checks of a code change: train the same prepared run with two checkouts for a fixed number of
steps (``trainer.max_steps=N trainer.max_time_min=null``), then

    .venv/bin/python scripts/compare_runs.py OLD_RUN_DIR NEW_RUN_DIR [--json out.json]

It reads each run's ``logs/metrics.csv`` (the CSV logger's rows, one per ``log_every_n_steps``) and, where
present, ``results.json`` (the evaluate stage) and prints:
- how many logged steps the two runs share, and at how many of them the batch (bucket, batch size, audio seconds
  so far) differs: 0 means the sampler gave both runs the same batches;
- the largest absolute and relative difference of the training loss and of the learning rate over those steps;
- the WER of each run (per language, macro) and the difference.

Exit status 0 whatever it finds (it reports; the reader decides what is "within noise"), 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

BATCH_COLUMNS = ("train/bucket", "train/batch_size", "train/audio_seconds")


def read_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """``{step: {column: value}}`` of the training rows of ``run_dir/logs/metrics.csv`` (empty cells left out)."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a trained run with the CSV logger?)")
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
            if "train/loss" in values:
                rows[int(values["step"])] = values
    if not rows:
        raise ValueError(f"{path} holds no row with train/loss")
    return rows


def compare(old_dir: Path, new_dir: Path) -> dict:
    """The comparison as a dict (what the script prints); see the module docstring."""
    old, new = read_metrics(old_dir), read_metrics(new_dir)
    steps = sorted(set(old) & set(new))
    batch_diff = [s for s in steps if any(old[s].get(c) != new[s].get(c) for c in BATCH_COLUMNS)]
    out = {"old": str(old_dir), "new": str(new_dir), "logged_steps_old": len(old), "logged_steps_new": len(new),
           "shared_steps": len(steps), "last_shared_step": steps[-1] if steps else None,
           "steps_with_other_batch": len(batch_diff), "first_step_with_other_batch": batch_diff[0] if batch_diff else None}
    for key in ("train/loss", "train/lr"):
        diffs = [(abs(old[s][key] - new[s][key]), abs(old[s][key] - new[s][key]) / max(abs(old[s][key]), 1e-12), s)
                 for s in steps if key in old[s] and key in new[s]]
        name = key.split("/")[1]
        out[f"max_abs_diff_{name}"] = max((d[0] for d in diffs), default=None)
        out[f"max_rel_diff_{name}"] = max((d[1] for d in diffs), default=None)
        out[f"identical_{name}_steps"] = sum(d[0] == 0 for d in diffs)
    for tag, d in (("old", old_dir), ("new", new_dir)):
        res = d / "results.json"
        if res.is_file():
            r = json.loads(res.read_text())
            out[f"wer_{tag}"] = {"decoding": r.get("decoding"), **(r.get("wer") or {})}
            out[f"wer_ctc_{tag}"] = r.get("wer_ctc")
    if "wer_old" in out and "wer_new" in out:
        out["macro_wer_diff"] = round(out["wer_new"]["macro"] - out["wer_old"]["macro"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="run directory of the reference checkout")
    p.add_argument("new", type=Path, help="run directory of the changed checkout")
    p.add_argument("--json", type=Path, help="also write the comparison here")
    args = p.parse_args(argv)
    try:
        out = compare(args.old, args.new)
    except (OSError, ValueError) as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return 2
    print(f"logged steps: {out['logged_steps_old']} old, {out['logged_steps_new']} new, {out['shared_steps']} shared "
          f"(last {out['last_shared_step']})")
    print(f"steps whose batch differs (bucket, batch size, audio seconds): {out['steps_with_other_batch']}"
          + (f" (first at step {out['first_step_with_other_batch']})" if out["steps_with_other_batch"] else ""))
    for name in ("loss", "lr"):
        print(f"train {name}: max |diff| {out[f'max_abs_diff_{name}']}, max relative {out[f'max_rel_diff_{name}']}, "
              f"identical at {out[f'identical_{name}_steps']} of {out['shared_steps']} steps")
    for tag in ("old", "new"):
        if f"wer_{tag}" in out:
            w = out[f"wer_{tag}"]
            print(f"WER {tag} ({w.get('decoding')}): macro {w.get('macro')} per language {w.get('per_language')}; "
                  f"CTC greedy macro {(out.get(f'wer_ctc_{tag}') or {}).get('macro')}")
    if "macro_wer_diff" in out:
        print(f"macro WER new - old: {out['macro_wer_diff']:+.2f} points")
    if args.json:
        from speech_ed.atomic import atomic_write_json

        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
