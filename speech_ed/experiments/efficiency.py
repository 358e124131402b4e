"""The training-efficiency study: one preset, one seed, one memory budget, three ways to batch.

Usage::

    study = run_study(["recipes/espeak_multilingual/config.yaml"], ["run=cal1"],
                      StudySettings(strategies=["random", "lhotse", "2d-oomptimizer"], minutes=10,
                                    memory_gib=1.5))

Strategies, named by the batching strategy they train with (:mod:`speech_ed.sampling.strategies`) and what is
added to it; each trains from scratch into ``<run>/efficiency/<strategy>/``, reusing the run's manifests,
tokenizer and bins:

* ``random``: no bucketing (``data.sampler=random``) with the largest padding-aware ``max_duration_s`` that is
  safe under the budget;
* ``lhotse``: lhotse's ``DynamicBucketingSampler`` (``data.sampler=lhotse``, ``data.num_buckets`` duration
  buckets) with a quadratic duration penalty and the largest safe ``max_duration_s`` (the 1D budget);
* ``2d-oomptimizer``: speech_ed's 2D bucketing (``data.sampler=2d``) on the run's bins with per-bucket batch
  sizes from the OOMptimizer.

Two ablations separate the batching from the curriculum (the 2D strategy's SortaGrad first epoch, below):

* ``1d-sortagrad``: speech_ed's 1D bucketing (``data.sampler=1d``) on the duration groups of the run's bins,
  with the 1D budget of ``lhotse`` (same ``max_duration_s`` and penalty) and SortaGrad on: a 1D baseline with
  the 2D strategy's curriculum;
* ``2d-no-sortagrad``: ``2d-oomptimizer`` with SortaGrad off.

The safe settings come from :mod:`speech_ed.experiments.budgets`. During training :class:`DevCurve` evaluates a
fixed dev subset every ``eval_every_s`` seconds of training time, and that time is left out of the training
clock, the schedule and the time limit. ``data.sortagrad`` is the config's (the embedded recipe: true) except
in the ablations: it changes only the 2D strategy, whose first epoch then batches by duration group with each
group's smallest OOMptimizer size, since 2D batches from the first step kept the model on the CTC blank plateau
(docs/BENCHMARKS.md, section 1); random batching has no buckets to order and lhotse's sampler has no SortaGrad.
After training, the largest batches each run formed are measured with the same probe. Results go to
``<run>/efficiency/efficiency.json`` and, with the report, to ``<report_dir>/``
(:mod:`speech_ed.experiments.report`).
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speech_ed.atomic import atomic_write_json
from speech_ed.config import ConfigError, ExperimentConfig, load_config
from speech_ed.experiments.budgets import MemorySettings, find_safe_budgets, measure_batches, prepared_run
from speech_ed.oomptimizer.probes import resolve_probe
from speech_ed.sampling.strategies import WITH_BINS

STRATEGIES = ("random", "lhotse", "2d-oomptimizer")
ABLATIONS = ("1d-sortagrad", "2d-no-sortagrad")
BUDGETS = ("random", "1d", "2d-oomptimizer")
"""The safe settings of :func:`find_safe_budgets`: a duration budget without (random) and with (1d) the
quadratic penalty, and the OOMptimizer's per-bucket sizes."""
SETUP = {  # strategy -> (the safe setting it trains with, data.sampler, data.sortagrad; None: the config's)
    "random": ("random", "random", None),
    "lhotse": ("1d", "lhotse", None),
    "2d-oomptimizer": ("2d-oomptimizer", "2d", None),
    "1d-sortagrad": ("1d", "1d", True),
    "2d-no-sortagrad": ("2d-oomptimizer", "2d", False),
}
RENAMED = {"1d": "lhotse"}
"""Study strategies named otherwise before (``1d`` was lhotse's sampler, now 1D means speech_ed's)."""
NEVER = 1_000_000_000  # "no limit" for trainer.max_steps and checkpointing


@dataclass
class StudySettings:
    """What the study varies and measures (the experiment itself is the config)."""

    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    minutes: float | None = None
    """Training wall time per strategy (evaluations not counted)."""
    steps: int | None = None
    """Training steps per strategy (with ``minutes``: whichever comes first)."""
    memory: MemorySettings = field(default_factory=MemorySettings)
    quadratic_duration_s: float | None = 15.0
    """Penalty of the 1D baseline, ``d + d^2 / q`` (None: no penalty)."""
    dev_cuts: int = 100
    eval_every_s: float = 60.0
    report_dir: str = "docs"
    force: bool = False
    """Retrain strategies that already finished with the same settings."""

    def validate(self) -> None:
        renamed = [f"'{s}' is now '{RENAMED[s]}'" for s in self.strategies if s in RENAMED]
        if renamed:
            raise ConfigError(f"--strategies: {', '.join(renamed)} (lhotse's DynamicBucketingSampler); choose "
                              f"from {list(STRATEGIES + ABLATIONS)}")
        unknown = sorted(set(self.strategies) - set(STRATEGIES) - set(ABLATIONS))
        if unknown or not self.strategies:
            raise ConfigError(f"--strategies: unknown {unknown or 'none given'}; choose from "
                              f"{list(STRATEGIES + ABLATIONS)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"--strategies: {self.strategies} names a strategy twice")
        if self.minutes is None and self.steps is None:
            raise ConfigError("give --minutes (training time per strategy) and/or --steps")
        if self.minutes is not None and self.minutes <= 0 or self.steps is not None and self.steps < 1:
            raise ConfigError("--minutes must be > 0 and --steps >= 1")
        if self.quadratic_duration_s is not None and self.quadratic_duration_s <= 0:
            raise ConfigError("--quadratic-duration-s must be > 0 (0 on the command line means none)")
        if self.eval_every_s < 0 or self.dev_cuts < 0:
            raise ConfigError("--eval-every-s and --dev-cuts must be >= 0")


def strategy_overrides(name: str, base: ExperimentConfig, budgets: dict, settings: StudySettings) -> list[str]:
    """``key=value`` overrides that turn the base config into one strategy's run."""
    prepared = prepared_run(base)
    longest = math.ceil(budgets["longest_utterance_s"] * 100) / 100
    common = [f"run={base.run}/efficiency/{name}", "trainer.resume_from=null", "trainer.val_every_n_steps=0",
              f"trainer.checkpoint_every_n_steps={NEVER}", f"trainer.max_steps={settings.steps or NEVER}",
              f"trainer.max_time_min={settings.minutes if settings.minutes else 'null'}",
              f"data.manifest_dir={prepared.manifest_dir}", f"tokenizer.path={prepared.tokenizer}",
              # no cut the budgets were computed on is longer; lets the config check accept any budget above it
              f"data.max_utterance_s={min(base.data.max_utterance_s, longest)}"]
    budget, sampler, sortagrad = SETUP[name]
    if budget == "2d-oomptimizer":
        batch = [f"data.bucket_batch_sizes={budgets[budget]['file']}", "data.quadratic_duration_s=null"]
    else:  # a padding-aware max_duration_s; 1D with the study's quadratic penalty
        q = settings.quadratic_duration_s if budget == "1d" else None
        batch = [f"data.max_duration_s={budgets[budget]['max_duration_s']}",
                 f"data.quadratic_duration_s={q if q else 'null'}", "data.bucket_batch_sizes=''"]
    bins = prepared.bins if sampler in WITH_BINS else "''"
    return (common + [f"data.sampler={sampler}", f"data.bucket_bins={bins}", *batch]
            + ([] if sortagrad is None else [f"data.sortagrad={str(sortagrad).lower()}"]))


def batch_setting(name: str, budgets: dict) -> str:
    """One line describing a strategy's batch size rule."""
    name = SETUP[name][0]
    if name == "random":
        return f"max_duration_s {budgets['random']['max_duration_s']:g}"
    if name == "1d":
        q = budgets["1d"]["quadratic_duration_s"]
        return f"max_duration_s {budgets['1d']['max_duration_s']:g}" + (f", quadratic {q:g}" if q else "")
    sizes = budgets["2d-oomptimizer"]["batch_sizes"]
    return f"{len(sizes)} buckets, batch sizes {min(sizes)}-{max(sizes)}"


def run_strategy(cfg: ExperimentConfig, name: str, dev_cuts: list, tokenizer, settings: StudySettings,
                 key: dict, log: Callable[[str], None]) -> dict:
    """Train one strategy with a :class:`DevCurve` (or reuse a finished run with the same key)."""
    from speech_ed.experiments.dev_curve import DevCurve
    from speech_ed.training.train import train

    key = json.loads(json.dumps(key, sort_keys=True, default=str))  # as it reads back from the file
    done = cfg.run_dir / "efficiency_run.json"
    if done.is_file() and not settings.force:
        previous = json.loads(done.read_text())
        if previous.get("key") == key:
            log(f"strategy {name}: reusing the finished run in {cfg.run_dir} (--force retrains it)")
            return previous["result"]
    for stale in ("checkpoints", "logs"):  # a fresh run of this strategy, not a continuation
        shutil.rmtree(cfg.run_dir / stale, ignore_errors=True)
    log(f"strategy {name}: training into {cfg.run_dir} (sampler {cfg.data.sampler})")
    curve = DevCurve(dev_cuts, tokenizer, every_s=settings.eval_every_s, batch_size=cfg.eval.batch_size,
                     max_len_ratio=cfg.eval.max_len_ratio, pnc=cfg.tokenizer.pnc, precision=cfg.trainer.precision,
                     ctc_weight=cfg.loss.ctc_weight)
    train(cfg, callbacks=(curve,))
    result = curve.summary()
    shapes = result.pop("largest_batches")
    log(f"strategy {name}: measuring its {len(shapes)} largest batches with the probe")
    result["largest_batches_measured"] = measure_batches(cfg, tokenizer.vocab_size, settings.memory, shapes)
    last = curve.points[-1]
    result.update({"final_dev_wer": last["dev_wer"], "final_dev_loss": last["dev_loss"],
                   "curve": curve.points, "run_dir": str(cfg.run_dir), "sampler": cfg.data.sampler})
    atomic_write_json(done, {"key": key, "result": result})
    log(f"strategy {name}: {result['steps']} steps in {result['train_seconds']:.1f} s of training "
        f"({result['eval_seconds']:.1f} s of evaluation not counted), mean batch {result['mean_batch_size']:.1f}, "
        f"{result['audio_seconds_per_second']:.1f} audio s/s, final dev WER {result['final_dev_wer']}")
    return result


def run_study(yaml_paths: list[str], overrides: list[str], settings: StudySettings, command: str = "",
              log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict:
    """Run every strategy and write ``efficiency.json`` and the report; returns the study.

    Raises:
        ConfigError: bad settings or config; FileNotFoundError: the run is not prepared.
    """
    from speech_ed.data.tokenizer import Tokenizer
    from speech_ed.evaluation.sets import describe_device, inference_device
    from speech_ed.experiments.dev_curve import load_dev_subset
    from speech_ed.experiments.report import add_comparisons, write_report

    settings.validate()
    user = list(overrides)
    base = load_config(yaml_paths, user)
    prepared = prepared_run(base)
    prepared.check()
    # 'auto': cuda when training runs on a visible GPU, else cpu (the study names no target GPU: it measures
    # the machine it trains on)
    settings.memory.probe = resolve_probe(settings.memory.probe, base.trainer.accelerator)
    out_dir = base.run_dir / "efficiency"
    log(f"efficiency study: {base.recipe}/{base.run}, preset {base.model_preset}, strategies "
        f"{', '.join(settings.strategies)}, " + (f"{settings.minutes:g} min" if settings.minutes else "")
        + (" / " if settings.minutes and settings.steps else "") + (f"{settings.steps} steps" if settings.steps else "")
        + " of training each")
    budgets = find_safe_budgets(base, prepared, settings.memory, out_dir, settings.quadratic_duration_s, log)
    for name in settings.strategies:
        log(f"budgets: {name}: {batch_setting(name, budgets)}")
    tokenizer = Tokenizer.load(prepared.tokenizer)
    dev_cuts = load_dev_subset(prepared.manifest_dir / "cuts_dev.jsonl.gz", settings.dev_cuts, base.seed)
    log(f"dev subset: {len(dev_cuts)} utterances, evaluated every {settings.eval_every_s:g} s of training")
    results, configs = {}, {}
    for name in settings.strategies:
        extra = strategy_overrides(name, base, budgets, settings)
        cfg = configs[name] = load_config(yaml_paths, user + extra)
        key = {"config": asdict(cfg), "dev": [c.id for c in dev_cuts], "eval_every_s": settings.eval_every_s,
               "memory": asdict(settings.memory), "budget": budgets[SETUP[name][0]]}
        results[name] = run_strategy(cfg, name, dev_cuts, tokenizer, settings, key, log)
    device = inference_device(base)
    study = {
        "device": device, "device_name": describe_device(device), "recipe": base.recipe, "run": base.run,
        "model_preset": base.model_preset, "precision": base.trainer.precision, "seed": base.seed,
        "created": datetime.datetime.now().isoformat(timespec="seconds"), "command": command,
        "settings": {"minutes": settings.minutes, "steps": settings.steps, "dev_cuts": len(dev_cuts),
                     "eval_every_s": settings.eval_every_s, "quadratic_duration_s": settings.quadratic_duration_s,
                     # where SortaGrad took effect: speech_ed's bucketing samplers (random has no buckets to
                     # order, lhotse's sampler has no SortaGrad)
                     "sortagrad": {name: configs[name].data.sortagrad and configs[name].data.sampler in
                                   WITH_BINS for name in settings.strategies},
                     "num_buckets_lhotse": base.data.num_buckets},
        "memory": {k: budgets.get(k) for k in ("probe", "device", "memory_gib", "memory_fraction", "limit_gib",
                                               "trials")},
        "budgets": {name: budgets[name] for name in BUDGETS},
        "strategies": {name: {"batch_setting": batch_setting(name, budgets), **r} for name, r in results.items()},
        "strategy_order": list(settings.strategies),  # the JSON is written with sorted keys
    }
    add_comparisons(study)
    atomic_write_json(out_dir / "efficiency.json", study)
    paths = write_report(Path(settings.report_dir), study)
    log("wrote " + ", ".join(str(p) for p in [out_dir / "efficiency.json", *paths]))
    return study
