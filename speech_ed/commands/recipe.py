"""``speech-ed recipe NAME [--stage N] [--stop-stage M] [key=value ...]``: run ``recipes/NAME/prepare.py``.

The recipe's ``main(argv)`` runs its numbered stages in order; finished stages leave a ``.done`` marker in
the run folder and are skipped on the next run (see :mod:`speech_ed.recipe`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser):
    parser.add_argument("name", help="recipe folder under recipes/")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="--stage/--stop-stage and key=value overrides")


def main(args) -> int:
    from speech_ed.recipe import load_recipe

    return int(load_recipe(args.name).main(args.rest) or 0)
