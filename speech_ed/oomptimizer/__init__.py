"""OOMptimizer: the largest batch size of every bucket, found on a GPU, measured on a CPU or planned.

API::

    result = find_max_batch_size(fits, start=32, rel_gap=0.05)       # pure search, fits(bs) -> bool
    results = search_buckets(bins, fits, start=32)                    # largest bucket first, fits(b, bs)
    batch = make_worst_case_batch(B, max_duration_s, max_tokens, V)   # (B, S) audio, (B, U-1) tokens, ...
    probe = make_probe("cpu" | "cuda" | "simulate", dims, StepSettings.from_config(cfg),
                       memory_budget_gib=4, memory_fraction=0.9, target_gpu=None)
    probe.trial(batch_size, max_duration_s, max_tokens) -> TrialResult(fits, peak_bytes, seconds)
    sim = SimulateProbe(dims, settings, limit, gpu_like=True, gpu_model=GpuModel())  # CUDA model, all terms
    sim.peak_bytes(B, d, u); sim.replay(B, d, u, fresh=True) -> (fits, allocated, reserved); sim.fits(B, d, u)
    results = run_oomptimizer(bins_as_pairs(bins), probe)             # list[BucketResult]
    sizes = check_batch_sizes_match("bucket_batch_sizes.yaml", bins, dims)   # ValueError on a mismatch
    probe = resolve_probe("auto", cfg.trainer.accelerator, cfg.oomptimize.target_gpu)  # cuda | simulate | cpu
    print(out_of_memory_advice("bucket_batch_sizes.yaml"))            # what to do after an OOM in training

Imports ``models`` (to build the step) and ``sampling`` (bins and the YAML format), never ``training``.
"""

from speech_ed.oomptimizer.allocator import CachingAllocatorModel
from speech_ed.oomptimizer.batch import make_worst_case_batch, tokens_for_1d_bin
from speech_ed.oomptimizer.cuda_model import GPU_COMPUTE_CAPABILITY, CudaSemantics, GpuModel
from speech_ed.oomptimizer.io import (
                                      bins_as_pairs,
                                      check_batch_sizes_match,
                                      check_model_hash,
                                      model_config_hash,
                                      out_of_memory_advice,
                                      save_batch_sizes,
)
from speech_ed.oomptimizer.probes import (
                                      GPU_MEMORY_GIB,
                                      CpuProbe,
                                      CudaProbe,
                                      Probe,
                                      SimulateProbe,
                                      TrialResult,
                                      make_probe,
                                      resolve_probe,
)
from speech_ed.oomptimizer.runner import BucketResult, apply_safety_margin, run_oomptimizer
from speech_ed.oomptimizer.search import SearchResult, Trial, find_max_batch_size, search_buckets
from speech_ed.oomptimizer.step import PRECISIONS, StepSettings, TrainingStep, build_training_step

__all__ = [
    "GPU_COMPUTE_CAPABILITY", "GPU_MEMORY_GIB", "PRECISIONS", "BucketResult", "CachingAllocatorModel",
    "CpuProbe", "CudaProbe", "CudaSemantics", "GpuModel", "Probe", "SearchResult",
    "SimulateProbe", "StepSettings", "Trial", "TrainingStep", "TrialResult", "apply_safety_margin",
    "bins_as_pairs", "build_training_step", "check_batch_sizes_match", "check_model_hash",
    "find_max_batch_size", "make_probe", "resolve_probe", "make_worst_case_batch", "model_config_hash", "out_of_memory_advice", "run_oomptimizer",
    "save_batch_sizes", "search_buckets", "tokens_for_1d_bin",
]
