"""``speech-ed efficiency-study``: random vs lhotse (1D) vs 2D+OOMptimizer batching, one model, seed and memory.

Usage::

    # on a run whose stages prepare, tokenizer and bins are done (e.g. `speech-ed recipe espeak_multilingual
    # --stop-stage 2 run=cal1`): 10 minutes of training per strategy, 1.5 GiB of memory, CPU probe
    speech-ed efficiency-study --recipe espeak_multilingual --run cal1 --minutes 10 --memory-gib 1.5
    # a config instead of a recipe, a step budget, other overrides for every strategy
    speech-ed efficiency-study --config C.yaml --steps 300 --memory-gib 1 optim.warmup_steps=50

Trains each strategy into ``exp/<recipe>/<run>/efficiency/<strategy>/`` (a finished strategy with the same
settings is reused; ``--force`` retrains), caches the memory probing in ``.../efficiency/budgets.json`` and
writes ``<report-dir>/EFFICIENCY.md``, ``efficiency.json`` and ``efficiency_<device>.png`` (see
speech_ed.experiments.efficiency and speech_ed.experiments.budgets).
"""

from __future__ import annotations

import shlex
import sys

from speech_ed.config import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", default=None, help="recipe whose config.yaml is the base (recipes/NAME/)")
    parser.add_argument("--run", default=None, help="the prepared run to study (sets run=RUN)")
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config (repeatable; replaces the recipe's config.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every strategy")
    parser.add_argument("--strategies", default="random,lhotse,2d-oomptimizer",
                        help="comma-separated, from random, lhotse, 2d-oomptimizer (default: these three) and "
                             "the ablations 1d-sortagrad, 2d-no-sortagrad")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training wall time per strategy, evaluation excluded")
    parser.add_argument("--steps", type=int, default=None, help="training steps per strategy")
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="the shared memory budget, GiB (required by the cpu and simulate probes)")
    parser.add_argument("--memory-fraction", type=float, default=1.0, help="share of --memory-gib used")
    parser.add_argument("--probe", default="auto", choices=("auto", "cpu", "cuda", "simulate"),
                        help="how memory is probed (auto: cuda when training on a GPU, else cpu; see "
                             "speech_ed.oomptimizer.probes.resolve_probe)")
    parser.add_argument("--quadratic-duration-s", type=float, default=15.0,
                        help="the 1D budget's penalty d + d^2/q (lhotse, 1d-sortagrad; default 15, as Canary; 0: "
                             "none)")
    parser.add_argument("--interval-ratio", type=float, default=1.1,
                        help="longest/shortest duration of one interval of the random/1D budget analysis")
    parser.add_argument("--rel-gap", type=float, default=0.05, help="precision of every batch-size search")
    parser.add_argument("--dev-cuts", type=int, default=100, help="dev utterances evaluated (0: all)")
    parser.add_argument("--eval-every-s", type=float, default=60.0,
                        help="training seconds between dev evaluations (0: after every step)")
    parser.add_argument("--report-dir", default="docs", help="where EFFICIENCY.md, efficiency.json and the PNG go")
    parser.add_argument("--force", action="store_true", help="retrain strategies that already finished")


def main(args) -> int:
    from speech_ed.experiments.budgets import MemorySettings
    from speech_ed.experiments.efficiency import StudySettings, run_study
    from speech_ed.recipe import RECIPES_DIR

    yaml_paths = list(args.config)
    if not yaml_paths:
        if not args.recipe:
            print("efficiency-study: give --recipe NAME (with --run RUN) or --config C.yaml", file=sys.stderr)
            return 2
        path = RECIPES_DIR / args.recipe / "config.yaml"
        if not path.is_file():
            print(f"efficiency-study: no recipe config {path}", file=sys.stderr)
            return 2
        yaml_paths = [str(path)]
    overrides = ([f"run={args.run}"] if args.run else []) + list(args.overrides)
    settings = StudySettings(
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()], minutes=args.minutes,
        steps=args.steps, quadratic_duration_s=args.quadratic_duration_s or None, dev_cuts=args.dev_cuts,
        eval_every_s=args.eval_every_s, report_dir=args.report_dir, force=args.force,
        memory=MemorySettings(memory_gib=args.memory_gib, memory_fraction=args.memory_fraction, probe=args.probe,
                              rel_gap=args.rel_gap, interval_ratio=args.interval_ratio))
    command = "speech-ed efficiency-study " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "efficiency-study" else "speech-ed efficiency-study"
    try:
        run_study(yaml_paths, overrides, settings, command)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"efficiency-study: {e}", file=sys.stderr)
        return 1
    return 0
