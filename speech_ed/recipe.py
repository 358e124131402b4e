"""What every recipe shares: argument parsing and numbered, idempotent stages with ``.done`` markers.

A recipe's ``prepare.py`` lists its stages as ``(name, function)`` pairs and calls :func:`run_recipe`::

    def main(argv=None):
        return run_recipe(Path(__file__).with_name("config.yaml"), STAGES, argv)

Each stage function takes the resolved :class:`ExperimentConfig`. A finished stage writes
``<run_dir>/.done/<N>_<name>``; re-running skips it (delete the marker, or pass ``--force``, to redo it).
``speech-ed recipe NAME`` is ``load_recipe(NAME).main(argv)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

from speech_ed.atomic import atomic_write_text
from speech_ed.config import ExperimentConfig, load_config
from speech_ed.paths import RunPaths

Stage = tuple[str, Callable[[ExperimentConfig], None]]
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    """The module ``recipes/<name>/prepare.py`` (its ``main(argv)`` runs the stages, ``STAGES`` lists them).

    Raises:
        SystemExit: no such recipe, naming the known ones.
    """
    path = RECIPES_DIR / name / "prepare.py"
    if not path.is_file():
        known = sorted(p.parent.name for p in RECIPES_DIR.glob("*/prepare.py"))
        raise SystemExit(f"speech-ed recipe: no recipe {name!r} (known: {', '.join(known)})")
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_recipe_args(argv: list[str] | None, default_config: Path, num_stages: int):
    parser = argparse.ArgumentParser(description="run a speech_ed recipe's stages in order")
    parser.add_argument("--config", action="append", default=None, help=f"YAML config (default {default_config})")
    parser.add_argument("--stage", type=int, default=0, help="first stage to run")
    parser.add_argument("--stop-stage", type=int, default=num_stages - 1, help="last stage to run")
    parser.add_argument("--force", action="store_true", help="re-run stages even if marked done")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config or [default_config], args.overrides)
    return cfg, args


def run_recipe(default_config: Path, stages: list[Stage], argv: list[str] | None = None,
               check: Callable[[ExperimentConfig], None] | None = None) -> int:
    """Parse ``argv``, validate the config (before any data is read), then run the selected stages.

    ``check`` is the recipe's own validation (e.g. corpus part names); it runs before any stage and raises
    :class:`speech_ed.config.ConfigError` naming the field.
    """
    cfg, args = parse_recipe_args(argv, default_config, len(stages))
    if check is not None:
        check(cfg)
    done_dir = RunPaths.from_config(cfg).done_dir
    for n, (name, fn) in enumerate(stages):
        if not args.stage <= n <= args.stop_stage:
            continue
        marker = done_dir / f"{n}_{name}"
        if marker.exists() and not args.force:
            print(f"Stage {n}: {name}: already done ({marker}), skipping", flush=True)
            continue
        print(f"Stage {n}: {name}", flush=True)
        t0 = time.monotonic()
        fn(cfg)
        atomic_write_text(marker, f"{time.strftime('%Y-%m-%d %H:%M:%S')} took {time.monotonic() - t0:.1f} s\n")
        print(f"Stage {n}: {name}: done in {time.monotonic() - t0:.1f} s", flush=True)
    return 0
