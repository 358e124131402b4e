"""Memory probes on the tiny model: cpu measures, simulate agrees with it, cuda runs only on a GPU."""

from dataclasses import replace

import pytest
import torch

from speech_ed.config import load_model_preset
from speech_ed.oomptimizer.probes import CpuProbe, GiB, SimulateProbe, make_probe
from speech_ed.oomptimizer.runner import run_oomptimizer
from speech_ed.oomptimizer.step import StepSettings

LIMIT = int(0.02 * GiB)


@pytest.fixture(scope="module")
def dims():
    return replace(load_model_preset("tiny"), vocab_size=64)


@pytest.fixture(scope="module")
def cpu_probe(dims):
    return CpuProbe(dims, StepSettings(), LIMIT)


@pytest.fixture(scope="module")
def sim_probe(dims):
    return SimulateProbe(dims, StepSettings(), LIMIT)


def test_cpu_probe_peak_grows_with_batch_and_decides_by_the_limit(cpu_probe):
    small = cpu_probe.trial(2, 1.0, 12)
    large = cpu_probe.trial(16, 1.0, 12)
    assert cpu_probe.resident_bytes < small.peak_bytes < large.peak_bytes
    for r in (small, large):
        assert r.fits == (r.peak_bytes <= LIMIT)


def test_simulate_is_within_15_percent_of_the_cpu_measurement(cpu_probe, sim_probe):
    for shape in [(8, 1.0, 12), (4, 2.0, 24)]:
        measured = cpu_probe.measure(*shape)
        estimated = sim_probe.peak_bytes(*shape)
        assert abs(estimated - measured) / measured < 0.15, (shape, estimated, measured)


def test_cpu_preflight_skips_a_hopeless_first_trial(dims):
    probe = CpuProbe(dims, StepSettings(), LIMIT, preflight_factor=2.0)
    res = probe.trial(50_000, 2.0, 24)  # tens of GiB: must not run for real
    assert not res.fits and res.note.startswith("skipped")
    assert res.peak_bytes > 2 * LIMIT


@pytest.mark.slow
def test_search_with_simulate_fills_the_limit(sim_probe):
    bins = [(1.0, 12), (2.0, 40)]
    results = run_oomptimizer(bins, sim_probe, start=16, rel_gap=0.2)
    sizes = [r.batch_size for r in results]
    assert sizes[0] >= sizes[1] >= 1
    for r in results:
        assert r.peak_bytes <= LIMIT
        failures = [t for t in r.trials if not t.fits]
        assert failures and min(t.peak_bytes for t in failures) > LIMIT
        assert min(t.batch_size for t in failures) > r.batch_size


def test_gpu_like_simulation_and_precisions_run(dims):
    peaks = {}
    for precision in ("bf16-mixed", "32-true", "bf16-true"):
        probe = SimulateProbe(dims, StepSettings(precision=precision), LIMIT, gpu_like=True)
        peaks[precision] = probe.peak_bytes(4, 2.0, 24)
    assert peaks["bf16-true"] < peaks["32-true"]  # half-size parameters, optimizer state and activations


def test_make_probe_rejects_bad_settings(dims):
    with pytest.raises(ValueError, match="needs --memory-budget-gib"):
        make_probe("cpu", dims, StepSettings())
    with pytest.raises(ValueError, match="--target-gpu"):
        make_probe("simulate", dims, StepSettings(), target_gpu="b200-9000gb")
    with pytest.raises(ValueError, match="memory-fraction"):
        make_probe("simulate", dims, StepSettings(), memory_budget_gib=1, memory_fraction=0)
    probe = make_probe("simulate", dims, StepSettings(), target_gpu="h100-80gb")
    assert probe.gpu_like and abs(probe.limit_bytes / GiB - 0.9 * 79.1) < 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_probe_catches_oom_and_keeps_working(dims):
    probe = make_probe("cuda", dims, StepSettings(), memory_fraction=0.5)
    ok = probe.trial(4, 2.0, 24)
    assert ok.fits and ok.peak_bytes > 0
    resident = torch.cuda.memory_allocated()
    oom = probe.trial(1_000_000, 30.0, 200)
    assert not oom.fits and oom.peak_bytes is None
    assert torch.cuda.memory_allocated() <= resident * 1.05 + (1 << 20)  # the failed step freed its tensors
    again = probe.trial(4, 2.0, 24)
    assert again.fits


def test_simulate_for_a_gpu_plans_with_its_compute_capability(dims):
    assert make_probe("simulate", dims, StepSettings(), target_gpu="a100-80gb").capability == (8, 0)
    assert make_probe("simulate", dims, StepSettings(), target_gpu="h100-80gb").capability == (9, 0)


def test_gpu_trials_replay_the_allocator_and_fresh_checks_do_not_depend_on_history(dims):
    limit = int(0.1 * GiB)
    probe = SimulateProbe(dims, StepSettings(), limit, gpu_like=True)
    ok = probe.trial(8, 2.0, 24)
    assert ok.fits and ok.peak_bytes <= limit and ok.note.startswith("reserved")
    fits, allocated, reserved = probe.replay(8, 2.0, 24, fresh=True)
    assert fits and allocated <= reserved <= limit
    assert allocated >= probe.peak_bytes(8, 2.0, 24)  # blocks are 512-byte multiples, some handed out whole
    big = probe.trial(20_000, 2.0, 24)
    assert not big.fits and big.peak_bytes is None and "out of memory" in big.note
    _, _, reserved_past = probe.replay(20_000, 2.0, 24, fresh=True, to_end=True)
    assert reserved_past > limit  # run to its end, the step needs more than the limit
    before = probe.fits(64, 2.0, 24)
    probe.trial(20_000, 4.0, 48)  # leaves a different cache behind
    assert probe.fits(64, 2.0, 24) == before


def test_auto_probe_is_the_device_the_batch_sizes_are_for(monkeypatch):
    import torch

    from speech_ed.oomptimizer.probes import resolve_probe

    assert resolve_probe("simulate", "gpu", "h100-80gb") == "simulate"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_probe("auto", "auto", "h100-80gb") == "cuda"
    assert resolve_probe("auto", "cpu", "h100-80gb") == "simulate"  # training on the CPU: plan for the target
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_probe("auto", "gpu", "h100-80gb") == "simulate"
    assert resolve_probe("auto", "auto", None) == "cpu"  # no target GPU: this machine's CPU
