"""``speech-ed recipe NAME [--stage N] [--stop-stage M] [key=value ...]``: run ``recipes/NAME/prepare.py``.

The recipe's ``main(argv)`` runs its numbered stages in order; finished stages leave a ``.done`` marker in
the run folder and are skipped on the next run.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(name: str):
    path = RECIPES_DIR / name / "prepare.py"
    if not path.is_file():
        known = sorted(p.parent.name for p in RECIPES_DIR.glob("*/prepare.py"))
        raise SystemExit(f"speech-ed recipe: no recipe {name!r} (known: {', '.join(known)})")
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_arguments(parser):
    parser.add_argument("name", help="recipe folder under recipes/")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="--stage/--stop-stage and key=value overrides")


def main(args) -> int:
    return int(load_recipe(args.name).main(args.rest) or 0)
