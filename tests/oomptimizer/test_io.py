"""bucket_batch_sizes.yaml: provenance, the training-side match check and the out-of-memory advice."""

from dataclasses import replace

import pytest
import yaml

from speech_ed.config import load_model_preset
from speech_ed.oomptimizer.io import (
    bins_as_pairs,
    check_batch_sizes_match,
    model_config_hash,
    out_of_memory_advice,
    save_batch_sizes,
)
from speech_ed.oomptimizer.probes import Probe, TrialResult
from speech_ed.oomptimizer.runner import BucketResult, apply_safety_margin
from speech_ed.sampling.bins import BucketBins
from speech_ed.sampling.io import load_bucket_batch_sizes

BINS = BucketBins([2.0, 2.0, 5.0], [12, 20, 40])
COMMAND = "speech-ed oomptimize --bins b.yaml --probe cpu --out o.yaml --memory-fraction 0.9"


@pytest.fixture
def dims():
    return replace(load_model_preset("tiny"), vocab_size=64)


def write(path, dims, sizes=(40, 30, 10)):
    results = [BucketResult(i, d, t, s, 1000 * s, [TrialResult(s, True, 1000 * s, 0.1)])
               for i, ((d, t), s) in enumerate(zip(bins_as_pairs(BINS), sizes))]
    probe = Probe(limit_bytes=1 << 30, device_name="test cpu")
    probe.name = "cpu"
    save_batch_sizes(path, BINS, results, list(sizes), probe, dims, "bf16-mixed", 1.0, 0.9, 0.0, COMMAND,
                     {"start": 32, "rel_gap": 0.05})


def test_written_file_is_the_sampling_format_with_provenance(tmp_path, dims):
    path = tmp_path / "bucket_batch_sizes.yaml"
    write(path, dims)
    assert load_bucket_batch_sizes(path, BINS) == [40, 30, 10]  # the sampler's own loader accepts it
    data = yaml.safe_load(path.read_text())
    for key in ("probe", "device", "memory_budget_gib", "memory_fraction", "dtype", "model_hash",
                "peak_memory_gib", "trials", "command", "buckets"):
        assert key in data
    assert data["model_hash"] == model_config_hash(dims)
    assert check_batch_sizes_match(path, BINS, dims) == [40, 30, 10]
    assert check_batch_sizes_match(path, [(2.0, 12), (2.0, 20), (5.0, 40)], dims) == [40, 30, 10]


def test_other_model_is_refused_with_the_regenerate_command(tmp_path, dims):
    path = tmp_path / "bs.yaml"
    write(path, dims)
    with pytest.raises(ValueError, match="model_hash.*regenerate it with: speech-ed oomptimize --bins b"):
        check_batch_sizes_match(path, BINS, replace(dims, num_decoder_layers=2))
    with pytest.raises(ValueError, match="model_hash"):
        check_batch_sizes_match(path, BINS, replace(dims, vocab_size=65))


def test_other_bins_are_refused(tmp_path, dims):
    path = tmp_path / "bs.yaml"
    write(path, dims)
    with pytest.raises(ValueError, match="bucket 2 .*other bins.*regenerate"):
        check_batch_sizes_match(path, BucketBins([2.0, 2.0, 6.0], [12, 20, 40]), dims)
    with pytest.raises(ValueError, match="3 batch sizes but the bucket bins have 2 buckets"):
        check_batch_sizes_match(path, BucketBins([2.0, 5.0], [12, 40]), dims)


def test_hand_written_file_without_hash_is_refused_with_the_hash_to_add(tmp_path, dims):
    path = tmp_path / "bs.yaml"
    path.write_text("format: speech_ed.bucket_batch_sizes\nversion: 1\nbatch_sizes: [4, 3, 2]\n")
    with pytest.raises(ValueError, match=f"model_hash: {model_config_hash(dims)}"):
        check_batch_sizes_match(path, BINS, dims)


def test_out_of_memory_advice_lowers_the_fraction(tmp_path, dims):
    path = tmp_path / "bs.yaml"
    write(path, dims)
    msg = out_of_memory_advice(path)
    assert "--memory-fraction 0.75" in msg and "speech-ed oomptimize --bins b.yaml" in msg
    assert "--memory-fraction 0.9" not in msg
    assert "oomptimize" in out_of_memory_advice(None)


def test_safety_margin():
    assert apply_safety_margin([100, 10, 1], 0.1) == [90, 9, 1]
    with pytest.raises(ValueError, match="buckets \\[1\\] do not fit even one example"):
        apply_safety_margin([5, 0], 0.0)
    with pytest.raises(ValueError):
        apply_safety_margin([5], 1.0)


def test_1d_bins_use_a_token_estimate():
    pairs = bins_as_pairs(BucketBins([5.0, 10.0]))
    assert [d for d, _ in pairs] == [5.0, 10.0] and pairs[0][1] < pairs[1][1]
