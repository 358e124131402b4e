"""One memory budget, three batching strategies: the largest setting of each that is safe under the same probe.

Usage::

    budgets = find_safe_budgets(cfg, prepared, MemorySettings(memory_gib=1.5), out_dir, quadratic_duration_s=15)
    budgets["random"]["max_duration_s"], budgets["1d"]["max_duration_s"], budgets["2d-oomptimizer"]["file"]

* ``2d-oomptimizer``: the OOMptimizer's per-bucket batch sizes on the run's 2D bins, written as
  ``bucket_batch_sizes.yaml`` (the file ``speech-ed oomptimize`` writes).
* ``random`` and ``1d``: a padding-aware budget, ``n x eff(longest) <= D`` with ``eff(d) = d`` (random) or
  ``d + d^2 / q`` (1D, Lhotse's quadratic penalty). The utterance durations are cut into intervals
  ``[lo, hi]`` with ``hi / lo <= ratio``. A batch whose longest cut lies in an interval holds at most
  ``floor(D / eff(lo))`` cuts, each padded to at most ``hi`` seconds and to at most ``U`` decoder tokens (the
  most of any cut not longer than ``hi``). The OOMptimizer finds the largest batch size ``B`` that fits at
  ``(hi, U)`` with the same probe, so every batch of the interval fits when ``D < (B + 1) x eff(lo)``. The
  safe budget is the smallest of these over the intervals: any batch the sampler can form fits. (Lhotse's
  ``DynamicBucketingSampler`` checks the budget before it adds a cut, so its last cut may be longer than the
  ones the check saw; that rare overshoot is not covered, and the study measures the largest batches each
  run actually formed with the same probe afterwards.)

Every search result is cached in ``<out_dir>/budgets.json`` with a key of everything it depends on (model,
precision, probe, memory, the manifest, the bins, the interval ratio), so a second study reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speech_ed.atomic import atomic_write_json
from speech_ed.config import ExperimentConfig

SAFETY_EPS = 1e-9


@dataclass
class MemorySettings:
    """The shared memory budget and how it is probed."""

    memory_gib: float | None = None
    """Memory to fill, GiB (cpu and simulate need it; cuda defaults to the GPU's)."""
    memory_fraction: float = 1.0
    """Share of ``memory_gib`` used: the limit is ``memory_gib x memory_fraction``."""
    probe: str = "cpu"
    """'cpu' (measured peak), 'cuda' (real out-of-memory) or 'simulate' (fake-tensor estimate)."""
    rel_gap: float = 0.05
    """Search precision of every batch size (relative gap between largest fit and smallest failure)."""
    interval_ratio: float = 1.1
    """Longest / shortest duration of one interval of the random and 1D analysis."""


@dataclass
class PreparedRun:
    """What a recipe's prepare, tokenizer and bins stages left in a run folder."""

    manifest_dir: Path
    tokenizer: Path
    bins: Path

    def manifest(self, split: str) -> Path:
        """``<manifest_dir>/cuts_<split>.jsonl.gz`` (as :meth:`speech_ed.paths.RunPaths.manifest`)."""
        return self.manifest_dir / f"cuts_{split}.jsonl.gz"

    def check(self) -> None:
        """Raise FileNotFoundError naming every missing artefact and the stage that makes it."""
        need = {self.manifest("train"): "prepare", self.manifest("dev"): "prepare", self.tokenizer: "tokenizer",
                self.bins: "bins"}
        missing = [f"{p} (stage '{stage}')" for p, stage in need.items() if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError("the run is not prepared; missing: " + ", ".join(missing) + ". Run the "
                                    "recipe's stages up to 'bins' first, e.g. `speech-ed recipe <name> "
                                    "--stop-stage 2 run=<run>`")


def prepared_run(cfg: ExperimentConfig) -> PreparedRun:
    """The prepared artefacts ``cfg`` points to (see :class:`speech_ed.paths.RunPaths`)."""
    from speech_ed.paths import RunPaths

    paths = RunPaths.from_config(cfg)
    return PreparedRun(paths.manifest_dir, paths.tokenizer_model, paths.bucket_bins)


def duration_intervals(durations: np.ndarray, tokens: np.ndarray, ratio: float) -> list[tuple[float, float, int]]:
    """``(lo, hi, max_tokens)`` intervals covering every duration, ``hi <= ratio x lo``.

    ``lo`` and ``hi`` are the shortest and longest duration inside the interval; ``max_tokens`` is the most
    decoder tokens of any cut not longer than ``hi`` (a batch may mix in any shorter cut).
    """
    if not ratio > 1.0:
        raise ValueError(f"interval ratio must be > 1, got {ratio}")
    if len(durations) == 0:
        raise ValueError("no training cuts to compute budgets from")
    order = np.argsort(durations, kind="stable")
    d = np.asarray(durations, dtype=np.float64)[order]
    u = np.maximum.accumulate(np.asarray(tokens, dtype=np.int64)[order])
    out, i = [], 0
    while i < len(d):
        j = int(np.searchsorted(d, d[i] * ratio, side="right")) - 1
        out.append((float(d[i]), float(d[j]), int(u[j])))
        i = j + 1
    return out


def effective_duration(d: float, quadratic_duration_s: float | None) -> float:
    return d + d * d / quadratic_duration_s if quadratic_duration_s else d


def safe_max_duration(intervals: list[tuple[float, float, int]], batch_sizes: list[int],
                      quadratic_duration_s: float | None = None) -> tuple[float, int]:
    """Largest padding-aware budget under which no interval exceeds its batch size, and the limiting interval.

    Raises:
        ValueError: an interval where not even one cut fits.
    """
    best, limiting = math.inf, -1
    for k, ((lo, _, _), b) in enumerate(zip(intervals, batch_sizes)):
        if b < 1:
            raise ValueError(f"not even one {intervals[k][1]:.2f} s utterance fits the memory budget; raise it")
        d = (b + 1) * effective_duration(lo, quadratic_duration_s) * (1 - SAFETY_EPS)
        if d < best:
            best, limiting = d, k
    return math.floor(best * 10) / 10, limiting


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def build_probe(cfg: ExperimentConfig, vocab_size: int, memory: MemorySettings):
    """The OOMptimizer probe for ``cfg``'s model and training step (the tokenizer's vocabulary), and the dims."""
    from speech_ed.oomptimizer.runner import build_config_probe

    return build_config_probe(cfg, memory.probe, vocab_size, memory.memory_gib, memory.memory_fraction)


def find_safe_budgets(cfg: ExperimentConfig, prepared: PreparedRun, memory: MemorySettings, out_dir: Path,
                      quadratic_duration_s: float | None, log: Callable[[str], None] = print) -> dict:
    """Batch settings of every strategy under one memory budget (see the module docstring); cached.

    Returns:
        ``{"limit_gib", "probe", "device", "random": {...}, "1d": {...}, "2d-oomptimizer": {"file", ...},
        "intervals": [...]}``.
    """
    from speech_ed.data.tokenizer import Tokenizer
    from speech_ed.oomptimizer import check_batch_sizes_match, model_config_hash
    from speech_ed.sampling.io import load_bucket_bins

    tokenizer = Tokenizer.load(prepared.tokenizer)
    dims = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size)
    bins = load_bucket_bins(prepared.bins)
    manifest = prepared.manifest("train")
    key = {"model_hash": model_config_hash(dims), "precision": cfg.trainer.precision,
           "optim": [cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.grad_clip],
           "loss": [cfg.loss.label_smoothing, cfg.loss.ctc_weight], "memory": dataclasses.asdict(memory),
           "manifest": _fingerprint(manifest), "bins": _fingerprint(prepared.bins),
           "utterance_s": [cfg.data.min_duration_s, cfg.data.max_utterance_s], "pnc": cfg.tokenizer.pnc}
    key = json.loads(json.dumps(key, sort_keys=True))  # as it reads back from the file
    cache = out_dir / "budgets.json"
    sizes_file = out_dir / "bucket_batch_sizes.yaml"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") == key and sizes_file.is_file():
        check_batch_sizes_match(sizes_file, bins, dims)
        log(f"budgets: reusing {cache} (same model, data, bins and memory budget)")
        result = cached["result"]
    else:
        result = _search(cfg, memory, tokenizer, prepared, bins, sizes_file, log)
        atomic_write_json(cache, {"key": key, "result": result})
    # the penalty only changes how the cached interval sizes turn into a budget: no new probing
    d1, k1 = safe_max_duration(result["intervals"], result["interval_batch_sizes"], quadratic_duration_s)
    result = {**result, "1d": {"max_duration_s": d1, "quadratic_duration_s": quadratic_duration_s,
                               "limiting_interval": k1}}
    for name in ("random", "1d"):
        if result[name]["max_duration_s"] < result["longest_utterance_s"]:
            raise ValueError(f"the {name} budget {result[name]['max_duration_s']} s is shorter than the longest "
                             f"utterance ({result['longest_utterance_s']} s); raise --memory-gib")
    return result


def _search(cfg, memory: MemorySettings, tokenizer, prepared: PreparedRun, bins, sizes_file: Path, log) -> dict:
    """Run the OOMptimizer on the 2D bins and on the duration intervals; save the 2D batch-size file."""
    from speech_ed.data.lengths import measure_manifest_lengths
    from speech_ed.oomptimizer.runner import BatchSizeError, run_oomptimizer, search_and_save

    d = cfg.data
    lengths = measure_manifest_lengths(prepared.manifest("train"), prepared.tokenizer,
                                       pnc=cfg.tokenizer.pnc, progress=False)
    keep = (lengths.durations >= d.min_duration_s) & (lengths.durations <= d.max_utterance_s)
    intervals = duration_intervals(lengths.durations[keep], lengths.tokens[keep], memory.interval_ratio)
    probe, dims = build_probe(cfg, tokenizer.vocab_size, memory)
    log(f"budgets: probe {probe.name} on {probe.device_name}, limit {probe.limit_bytes / (1 << 30):.3f} GiB; "
        f"{bins.num_buckets} 2D buckets and {len(intervals)} duration intervals to search")
    say = (lambda line: log("  " + line))
    log("budgets: 2D bins (OOMptimizer)")
    command = (f"speech-ed efficiency-study (probe {memory.probe}, memory {memory.memory_gib} GiB x "
               f"{memory.memory_fraction})")
    try:
        results_2d, sizes = search_and_save(bins, probe, dims, cfg.trainer.precision, sizes_file, memory.memory_gib,
                                            memory.memory_fraction, 0.0, command, rel_gap=memory.rel_gap, log=say)
    except BatchSizeError as e:
        raise ValueError(f"buckets {e.buckets} fit no example in the memory budget; raise --memory-gib") from None
    log("budgets: duration intervals (worst batch of a padding-aware budget)")
    results_1d = run_oomptimizer([(hi, u) for _, hi, u in intervals], probe, rel_gap=memory.rel_gap, log=say)
    interval_sizes = [r.batch_size for r in results_1d]
    d_random, k_random = safe_max_duration(intervals, interval_sizes, None)
    from speech_ed.oomptimizer.probes import GiB

    limit_gib, probe_name, device_name = round(probe.limit_bytes / GiB, 4), probe.name, probe.device_name
    release(probe)
    return {
        "limit_gib": limit_gib, "probe": probe_name, "device": device_name,
        "memory_gib": memory.memory_gib, "memory_fraction": memory.memory_fraction,
        "longest_utterance_s": float(max(hi for _, hi, _ in intervals)),
        "intervals": [list(i) for i in intervals], "interval_batch_sizes": interval_sizes,
        "interval_peak_gib": [None if r.peak_bytes is None else round(r.peak_bytes / GiB, 4) for r in results_1d],
        "random": {"max_duration_s": d_random, "limiting_interval": k_random},
        "2d-oomptimizer": {"file": str(sizes_file), "batch_sizes": sizes,
                           "peak_gib": [None if r.peak_bytes is None else round(r.peak_bytes / GiB, 4)
                                        for r in results_2d]},
        "trials": sum(len(r.trials) for r in results_2d + results_1d),
    }


def measure_batches(cfg: ExperimentConfig, vocab_size: int, memory: MemorySettings,
                    shapes: list[list]) -> list[dict]:
    """Run the probe's training step on the given ``[cuts, longest_s, decoder_tokens]`` batch shapes."""
    from speech_ed.oomptimizer.probes import GiB

    if not shapes:
        return []
    probe, _ = build_probe(cfg, vocab_size, memory)
    out = []
    for n, dur, tok in shapes:
        r = probe.trial(int(n), float(dur), int(tok))
        out.append({"cuts": int(n), "longest_s": round(float(dur), 3), "decoder_tokens": int(tok),
                    "fits": bool(r.fits), "peak_gib": None if r.peak_bytes is None else round(r.peak_bytes / GiB, 4)})
    release(probe)
    return out


def release(probe) -> None:
    """Free a probe's model and optimizer now (on a GPU, before training needs the memory)."""
    import gc

    import torch

    probe.__dict__.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
