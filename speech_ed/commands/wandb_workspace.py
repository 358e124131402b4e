"""``speech-ed wandb-workspace --project P --padding-group G [--training-runs R ...] --out FILE``.

Writes the padding comparison (bar charts of a padding report's strategies, padding and throughput of training
runs over steps) as a workspace spec (JSON): see :mod:`speech_ed.evaluation.wandb_workspace` and docs/WANDB.md.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser):
    parser.add_argument("--project", default="speech_ed", help="W&B project (trainer.wandb_project)")
    parser.add_argument("--entity", default="", help="W&B entity (default: the account's)")
    parser.add_argument("--padding-group", required=True, help="the --wandb-group of `speech-ed padding-report`")
    parser.add_argument("--training-runs", nargs="*", default=[], help="training run names, e.g. librispeech/sampler-random")
    parser.add_argument("--out", required=True, help="JSON file to write")


def main(args) -> int:
    from speech_ed.atomic import atomic_write_json
    from speech_ed.evaluation.wandb_workspace import padding_workspace

    spec = padding_workspace(args.project, args.padding_group, args.training_runs, args.entity)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, spec)
    panels = sum(len(s["panels"]) for s in spec["sections"])
    print(f"wandb-workspace: wrote {out} ({len(spec['sections'])} sections, {panels} panels)")
    print(json.dumps([s["Section"]["name"] for s in spec["sections"]]))
    return 0
