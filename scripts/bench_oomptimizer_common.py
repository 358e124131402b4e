"""Helpers shared by the OOMptimizer benchmarks (``bench_oomptimizer*.py``, ``gpu_oomptimizer_check.py``).

Not a benchmark itself. What lives here:

* the bins and the recorded H100 figures of the GPU check (session 2), so every script compares with the same;
* :class:`Judge`: one batch's peak and fits / does-not-fit verdict from a probe, every check recorded;
* :class:`MemoryModel` and the model-guided, trace-verified searches: per-bucket sizes
  (:func:`traced_bucket_sizes`) and the largest single padding-aware budget whose epoch never exceeds the
  limit (:func:`largest_safe_budget`), both run by :func:`study`;
* one simulated epoch (:func:`epoch`) and the table comparing them (:func:`epoch_table`).

The memory model only decides where a search starts and which batches of an epoch are checked; every size and
every verdict reported comes from a trace (or a CPU measurement).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speech_ed.sampling import Lengths, simulate_epoch  # noqa: E402

GiB = 1 << 30
# (max_duration_s, max_tokens), after the bucket bounds in NeMo's OOMptimizer documentation for Canary.
H100_BINS = [[3.975, 48], [8.88, 110], [14.7, 180], [20.26, 250], [32.5, 400], [40.0, 480]]
# Session 2, docs/BENCHMARKS.md "GPU check: measured on an H100 (session 2)": canary_180m_flash, bf16-mixed,
# V = 5248, memory fraction 0.9 of 79.18 GiB (limit 71.26 GiB), second model copy resident, torch 2.11.0.
H100_TOTAL_GIB = 79.18
H100_CUDA_SIZES = [871, 367, 210, 160, 95, 76]
H100_CUDA_PEAK_GIB = [69.52, 66.69, 63.70, 67.70, 65.97, 65.74]  # torch.cuda.max_memory_allocated at those
H100_SIMULATE_SIZES = [796, 327, 181, 121, 65, 50]  # session 2's simulate probe, same run


def log(msg: str) -> None:
    print(msg, flush=True)


class Judge:
    """Peak bytes and verdict of one batch, ``check(n, d, u, stage) -> (peak_bytes, fits)``; all recorded.

    Args:
        check_fn: ``(n, max_duration_s, max_tokens) -> (peak_bytes, fits)``.
        limit_bytes: the memory limit (for reports).
    """

    def __init__(self, check_fn: Callable[[int, float, int], tuple[int, bool]], limit_bytes: int):
        self.check_fn = check_fn
        self.limit_bytes = limit_bytes
        self.traces: list[dict] = []

    def check(self, n: int, d: float, u: int, stage: str = "baseline") -> tuple[int, bool]:
        t0 = time.perf_counter()
        peak, fits = self.check_fn(int(n), float(d), int(u))
        self.traces.append({"stage": stage, "n": int(n), "max_duration_s": float(d), "max_tokens": int(u),
                            "peak_gib": round(peak / GiB, 4), "fits": bool(fits),
                            "seconds": round(time.perf_counter() - t0, 2)})
        return peak, fits

    def measure(self, n: int, d: float, u: int, stage: str = "calibration") -> int:
        return self.check(n, d, u, stage)[0]


def cpu_judge(probe) -> Judge:
    """A :class:`~speech_ed.oomptimizer.CpuProbe`: the measured peak, fits when at most the limit."""

    def check(n, d, u):
        peak = probe.measure(n, d, u)
        return peak, peak <= probe.limit_bytes

    return Judge(check, probe.limit_bytes)


def simulate_judge(probe) -> Judge:
    """A :class:`~speech_ed.oomptimizer.SimulateProbe`. With the allocator model (GPU targets): the allocated
    peak of the whole step, and fits when the allocator, started from the state after set-up, never reserves
    past the limit (the same answer whatever was checked before). Otherwise: the tensor peak <= limit."""

    def check(n, d, u):
        if probe.allocator is None:
            peak = probe.peak_bytes(n, d, u)
            return peak, peak <= probe.limit_bytes
        fits, allocated, _ = probe.replay(n, d, u, fresh=True, to_end=True)
        return allocated, fits

    return Judge(check, probe.limit_bytes)


class MemoryModel:
    """peak = k0 + n x (a0 + a1 L + a2 L^2 + a3 U + a4 U L + a5 U^2), least squares on measured batches."""

    def __init__(self, points: list[tuple[int, float, int, int]]):
        x = np.array([self._features(n, d, u) for n, d, u, _ in points])
        y = np.array([p for *_, p in points], dtype=np.float64)
        self.coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        rel = np.abs(x @ self.coef - y) / y
        self.max_rel_error, self.mean_rel_error, self.num_points = float(rel.max()), float(rel.mean()), len(y)

    @staticmethod
    def _features(n, d, u):
        n, d, u = (np.asarray(v, dtype=np.float64) for v in (n, d, u))
        return np.stack([np.ones_like(n), n, n * d, n * d * d, n * u, n * u * d, n * u * u], axis=-1)

    def predict(self, n, d, u) -> np.ndarray:
        return self._features(n, d, u) @ self.coef

    def max_batch(self, d: float, u: int, limit: float) -> float:
        """Batch size whose predicted peak is ``limit`` (fractional)."""
        c0 = float(self.predict(0, d, u))
        return (limit - c0) / (float(self.predict(1, d, u)) - c0)


def batch_shapes(lengths: Lengths, batches) -> np.ndarray:
    """(num_batches, 3): size, longest duration, most tokens of each batch."""
    return np.array([(len(b), lengths.durations[b].max(), lengths.tokens[b].max()) for b in batches])


def epoch(lengths, strategy, bins=None, sizes=None, max_duration_s=None, q=None):
    """One simulated epoch (seed 0, lenient 2D); returns (report, batch shapes)."""
    rep, batches = simulate_epoch(lengths, strategy, bins, batch_sizes=sizes, max_duration_s=max_duration_s,
                                  quadratic_duration_s=q, strict=False, seed=0)
    return rep, batch_shapes(lengths, batches)


def epoch_summary(rep: dict) -> dict:
    return {"mean_batch_size": rep["cuts_yielded"] / rep["batches"], "batches": rep["batches"],
            "cuts": rep["cuts_yielded"], "input_padding": rep.get("input_padding"),
            "output_padding": rep.get("output_padding")}


def calibration_points(lengths: Lengths, judge: Judge, sizes_for: Callable[[float, int], list[int]],
                       quantiles=(0.0, 0.1, 0.4, 0.7, 0.95, 1.0)) -> list[tuple[int, float, int, int]]:
    """Traced batches spread over (duration, tokens): low and high tokens at each duration quantile, batch
    sizes from ``sizes_for(d, u)``; so the memory model also knows batches no bucket bound describes."""
    points = []
    for d in np.quantile(lengths.durations, quantiles):
        near = lengths.tokens[np.abs(lengths.durations - d) <= max(0.5, 0.05 * d)]
        for u in (int(np.quantile(near, 0.05)), int(near.max())):
            for n in sizes_for(float(d), u):
                points.append((n, float(d), u, judge.measure(n, float(d), u)))
    return points


def guided_search(fits: Callable[[int], bool], n0: int, rel_gap: float) -> tuple[int, Optional[int]]:
    """Largest fitting size from a predicted start; stops when success and failure are within ``rel_gap``
    (the stop rule of ``find_max_batch_size``). Returns (largest fit, smallest failure)."""
    lo, hi = 0, None
    n = max(1, n0)
    while True:
        if fits(n):
            lo = n
        else:
            hi = n
        if hi is not None and lo > 0 and (hi - lo <= 1 or (hi - lo) / hi <= rel_gap):
            return lo, hi
        if hi is None:
            n = max(lo + 1, math.floor(lo / (1 - rel_gap)))
        elif lo == 0:
            if hi == 1:
                return 0, 1
            n = min(hi - 1, math.ceil(hi * (1 - rel_gap)))
        else:
            n = (lo + hi) // 2


def traced_bucket_sizes(pairs, judge: Judge, model: MemoryModel, rel_gap: float = 0.05,
                        log_fn=log) -> list[dict]:
    """Per-bucket sizes, largest bucket first, every verdict traced: start at the model's size for a target
    peak, then step by ``rel_gap`` until a traced fit and a traced failure are at most ``rel_gap`` apart. The
    target starts at the limit and becomes the median share of the limit that the found sizes reached
    (allocator fragmentation keeps it below 1), so later searches start closer."""
    out, shares = [], []
    for b in sorted(range(len(pairs)), key=lambda i: pairs[i], reverse=True):
        d, u = pairs[b]
        target = judge.limit_bytes * (float(np.median(shares)) if shares else 1.0)
        n_pred = model.max_batch(d, u, target)
        trials = []

        def fits(n, d=d, u=u, trials=trials):
            peak, ok = judge.check(n, d, u, "bucket")
            trials.append((n, round(peak / GiB, 4), ok, float(model.predict(n, d, u)) / peak - 1))
            return ok

        lo, hi = guided_search(fits, math.floor(n_pred), rel_gap)
        peak_lo = next((p for n, p, ok, _ in reversed(trials) if n == lo and ok), None)
        if peak_lo is not None:
            shares.append(peak_lo * GiB / judge.limit_bytes * (1 + rel_gap / 2))
        out.append({"bucket": b, "max_duration_s": d, "max_tokens": u, "predicted_max": round(n_pred, 1),
                    "batch_size": lo, "smallest_failure": hi, "peak_gib": peak_lo,
                    "trials": [[n, p, ok, round(e, 4)] for n, p, ok, e in trials]})
        log_fn(f"bucket {b:3d} ({d:5.2f} s, {u:3d} tok): started at {n_pred:6.1f}, found {lo:4d} "
               f"(fails at {hi}), peak {peak_lo} GiB, {len(trials)} traces")
    return sorted(out, key=lambda r: r["bucket"])


def study(lengths: Lengths, bins, judge: Judge, baselines: list[tuple], rel_gap: float = 0.05,
          log_fn=log) -> dict:
    """Per-bucket sizes against single padding-aware budgets, on one memory limit (session 2's method).

    1. Pilot: the longest bucket at B = 8 and 16, for a rough cost per padded second.
    2. Calibration: 6 durations x (5 % quantile, max) tokens x sizes near 50 % and 90 % of the limit; the
       :class:`MemoryModel` is fitted on them.
    3. Every bucket traced (:func:`traced_bucket_sizes`); the model's error on these held-out traces is kept.
    4. One epoch with the found sizes (2D, lenient), and for each baseline ``(label, strategy, bins, q)`` the
       largest single ``max_duration_s`` whose epoch never exceeds the limit (:func:`largest_safe_budget`,
       model refitted on every trace so far).

    Returns:
        dict with ``pilot``, ``calibration`` (model errors), ``buckets``, ``sizes``, ``held_out`` errors,
        ``refit``, ``ours`` and ``baselines``.
    """
    from speech_ed.oomptimizer import bins_as_pairs

    pairs = bins_as_pairs(bins)
    limit = judge.limit_bytes
    d_max, u_max = max(pairs)
    p8, p16 = judge.measure(8, d_max, u_max, "pilot"), judge.measure(16, d_max, u_max, "pilot")
    per_s = (p16 - p8) / 8 / d_max
    k = p8 - 8 * per_s * d_max
    log_fn(f"pilot: {d_max} s x {u_max} tok: B=8 {p8 / GiB:.2f} GiB, B=16 {p16 / GiB:.2f} GiB "
           f"({per_s * 1000 / GiB:.1f} MiB per padded second)")
    calib = calibration_points(
        lengths, judge, lambda d, u: [max(1, int((limit - k) * f / (per_s * d))) for f in (0.5, 0.9)])
    model = MemoryModel(calib)
    log_fn(f"memory model on {model.num_points} calibration traces: mean/max error "
           f"{model.mean_rel_error:.2%} / {model.max_rel_error:.2%}")
    t0 = time.perf_counter()
    buckets = traced_bucket_sizes(pairs, judge, model, rel_gap, log_fn)
    search_s = time.perf_counter() - t0
    held_out = np.array([abs(e) for r in buckets for *_, e in r["trials"]])
    log_fn(f"search: {search_s:.0f} s, {len(held_out)} traces; model error on them (held out): mean "
           f"{held_out.mean():.2%}, max {held_out.max():.2%}")
    points = calib + [(n, r["max_duration_s"], r["max_tokens"], p * GiB)
                      for r in buckets for n, p, *_ in r["trials"]]
    refit = MemoryModel(points)
    sizes = [r["batch_size"] for r in buckets]
    if min(sizes) < 1:
        empty = [r["bucket"] for r in buckets if r["batch_size"] < 1]
        raise SystemExit(f"buckets {empty} do not fit one example in {limit / GiB:.3f} GiB: use a bigger "
                         "budget or a smaller model")
    rep, shapes = epoch(lengths, "2d", bins, sizes=sizes)
    ours = {**epoch_summary(rep),
            "max_predicted_gib": round(float(refit.predict(*shapes.T).max()) / GiB, 3)}
    found = [r["peak_gib"] * GiB / limit for r in buckets if r["peak_gib"] is not None]
    target = limit * float(np.median(found)) if found else limit
    out_baselines = []
    for label, strategy, b_bins, q in baselines:
        bl = largest_safe_budget(lengths, strategy, b_bins, q, refit, judge, target)
        bl["label"] = label
        out_baselines.append(bl)
        log_fn(f"baseline {baseline_name(bl)}: max_duration_s {bl['max_duration_s']}, mean batch size "
               f"{bl['mean_batch_size']:.2f}, checked fit {bl['all_fit']}, +5 % fits {bl['plus5pct_fits']}")
    return {"pilot_gib": [round(p8 / GiB, 4), round(p16 / GiB, 4)],
            "calibration": {"points": model.num_points, "mean_rel_error": model.mean_rel_error,
                            "max_rel_error": model.max_rel_error},
            "buckets": buckets, "sizes": sizes, "search_seconds": round(search_s, 1),
            "held_out": {"traces": int(len(held_out)), "mean_abs_error": float(held_out.mean()),
                         "max_abs_error": float(held_out.max())},
            "refit": {"points": refit.num_points, "mean_rel_error": refit.mean_rel_error,
                      "max_rel_error": refit.max_rel_error},
            "model": refit, "ours": ours, "baselines": out_baselines}


def guaranteed_safe_budget(lengths: Lengths, q, model: MemoryModel, limit: float) -> float:
    """Largest max_duration_s for which *any* batch the padding-aware budget allows is predicted to fit:
    n = floor(D / eff(L)) cuts padded to the longest L and to the most tokens of any cut not longer than L."""
    order = np.argsort(lengths.durations, kind="stable")
    d = lengths.durations[order]
    u = np.maximum.accumulate(lengths.tokens[order])
    eff = d + d * d / q if q else d

    def ok(budget):
        n = np.maximum(np.floor(budget / eff), 1)
        return bool(model.predict(n, d, u).max() <= limit)

    lo, hi = float(d.max()), 20000.0
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def largest_safe_budget(lengths, strategy, bins, q, model: MemoryModel, judge: Judge,
                        target_bytes: Optional[float] = None) -> dict:
    """Largest max_duration_s whose epoch never exceeds the limit: found with the model (aiming its worst
    batch at ``target_bytes``, default the limit), then the 3 batches the model ranks worst are checked and D
    lowered 2 % until they all fit; the worst batch of a 5 % larger D is checked to show it does not."""
    limit = judge.limit_bytes
    target = limit if target_bytes is None else target_bytes

    def worst(d):
        rep, shapes = epoch(lengths, strategy, bins, max_duration_s=d, q=q)
        return rep, shapes, model.predict(shapes[:, 0], shapes[:, 1], shapes[:, 2])

    lo, hi = float(lengths.durations.max()), 20000.0  # lo: one longest utterance per batch (assumed to fit)
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if worst(mid)[2].max() <= target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.002:
            break
    d = lo
    checked = []
    for _ in range(8):
        rep, shapes, pred = worst(d)
        checked = []
        for i in np.argsort(-pred)[:3]:
            n, dur, u = int(shapes[i, 0]), float(shapes[i, 1]), int(shapes[i, 2])
            peak, ok = judge.check(n, dur, u)
            checked.append((n, dur, u, float(pred[i]), peak, ok))
            if not ok:
                break
        if all(c[-1] for c in checked):
            break
        d *= 0.98
    _, shapes_up, pred_up = worst(d * 1.05)
    i = int(np.argmax(pred_up))
    above_peak, above_fits = judge.check(int(shapes_up[i, 0]), float(shapes_up[i, 1]), int(shapes_up[i, 2]))
    d_any = min(guaranteed_safe_budget(lengths, q, model, target), d)  # never above what the epoch allows
    rep_any, _ = epoch(lengths, strategy, bins, max_duration_s=d_any, q=q)
    return {"strategy": strategy, "quadratic_duration_s": q, "max_duration_s": round(d, 1),
            **epoch_summary(rep),
            "any_batch_safe_max_duration_s": round(d_any, 1),
            "any_batch_safe_mean_batch_size": rep_any["cuts_yielded"] / rep_any["batches"],
            "top_batches_checked": [[n, dur, u, round(p / GiB, 4), round(m / GiB, 4), ok]
                                    for n, dur, u, p, m, ok in checked],
            "all_fit": all(c[-1] for c in checked),
            "plus5pct_top_batch_gib": round(above_peak / GiB, 4), "plus5pct_fits": bool(above_fits)}


def baseline_name(bl: dict) -> str:
    if bl.get("label"):
        return bl["label"]
    if bl["strategy"] == "random":
        return "no bucketing"
    name = "1D x30" if bl["strategy"] == "1d" else "2D bins"
    return name + (f" + quadratic {bl['quadratic_duration_s']:g}" if bl["quadratic_duration_s"] else "")


def epoch_table(ours_name: str, ours: dict, baselines: list[dict], log_fn=log) -> None:
    """Print our epoch against each baseline's, and store the ratios in the baseline dicts."""
    log_fn(f"{'sampler':<38} {'max_duration_s':>14} {'batches':>8} {'mean_bs':>8} {'ratio':>6} "
           f"{'in_pad':>7} {'out_pad':>7} {'top3 fit':>8} {'+5% fits':>8} {'any-batch-safe D':>16} "
           f"{'mean_bs':>8} {'ratio':>6}")
    pad = lambda r, k: f"{100 * r[k]:6.2f}%" if r.get(k) is not None else f"{'-':>7}"  # noqa: E731
    log_fn(f"{ours_name:<38} {'-':>14} {ours['batches']:>8} {ours['mean_batch_size']:>8.2f} {1.0:>6.2f} "
           f"{pad(ours, 'input_padding')} {pad(ours, 'output_padding')}")
    for bl in baselines:
        bl["ratio_ours_over_this"] = ours["mean_batch_size"] / bl["mean_batch_size"]
        bl["ratio_ours_over_any_batch_safe"] = ours["mean_batch_size"] / bl["any_batch_safe_mean_batch_size"]
        log_fn(f"{baseline_name(bl):<38} {bl['max_duration_s']:>14.1f} {bl['batches']:>8} "
               f"{bl['mean_batch_size']:>8.2f} {bl['ratio_ours_over_this']:>6.2f} {pad(bl, 'input_padding')} "
               f"{pad(bl, 'output_padding')} {bl['all_fit']!s:>8} {bl['plus5pct_fits']!s:>8} "
               f"{bl['any_batch_safe_max_duration_s']:>16.1f} {bl['any_batch_safe_mean_batch_size']:>8.2f} "
               f"{bl['ratio_ours_over_any_batch_safe']:>6.2f}")
