"""Exact mid-epoch resume.

Sampler level: a state taken after step k (with later steps already prefetched) continues with exactly the
batches of an uninterrupted epoch, at the end of an epoch it starts the next one, and restoring never reads the
manifest before the saved position. Training level: a run killed with SIGKILL right after its checkpoint at
step k, then resumed, trains on the same batches in the same order as an uninterrupted run and ends with the
same weights; once in one process and once with 2 DDP processes on CPU (gloo).

The training runs are subprocesses of ``python -m tests.test_resume SPEC.json`` (see ``_worker``), so the kill
is real and Lightning's DDP launcher can start the second rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from speech_ed.sampling import BucketingSampler, estimate_bucket_bins
from speech_ed.sampling import stream as stream_module
from speech_ed.sampling.stream import gzip_index_path, open_manifest

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- sampler level

@pytest.fixture(scope="module")
def lazy_data(tmp_path_factory):
    from tests.sampling.helpers import synthetic_cuts

    cuts, tokens = synthetic_cuts(n=400)
    folder = tmp_path_factory.mktemp("lazy")
    cuts.to_file(folder / "cuts.jsonl.gz")
    cuts.to_file(folder / "cuts.jsonl")
    d = np.array([c.duration for c in cuts])
    t = np.array([tokens[c.id] for c in cuts])
    bins = estimate_bucket_bins(d, t, num_buckets=4, num_subbuckets=2, method="equal")
    return folder, tokens, bins


@pytest.fixture(autouse=True)
def _index_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECH_ED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stream_module, "MIN_INDEXED_BYTES", 0)  # index even these small manifests


def _sampler(path, tokens, bins, world_size=1, rank=0, sources=None):
    cuts = open_manifest(path) if sources is None else None
    return BucketingSampler(cuts, num_tokens=lambda c: tokens[c.id], bins=bins, strict=False, sources=sources,
                            max_duration_s=60.0, buffer_size=200, seed=7, world_size=world_size, rank=rank)


def _run(sampler, epochs):
    out = []
    for e in epochs:
        sampler.set_epoch(e)
        out += [(e, [c.id for c in batch]) for batch in sampler]
    return out


def _checkpoint_round_trip(state, tmp_path):
    torch.save(state, tmp_path / "state.pt")
    return torch.load(tmp_path / "state.pt", weights_only=True)  # what Lightning can load


@pytest.mark.parametrize("world_size", [1, 2])
def test_restore_after_prefetch_continues_exactly(lazy_data, tmp_path, world_size):
    folder, tokens, bins = lazy_data
    for rank in range(world_size):
        full = _run(_sampler(folder / "cuts.jsonl.gz", tokens, bins, world_size, rank), [0, 1])
        k = 7
        first = _sampler(folder / "cuts.jsonl.gz", tokens, bins, world_size, rank)
        first.set_epoch(0)
        it = iter(first)
        head = [(0, [c.id for c in next(it)]) for _ in range(k)]
        for _ in range(3):  # prefetched by the DataLoader, never trained on
            next(it)
        state = _checkpoint_round_trip(first.state_dict(consumed=k), tmp_path)
        resumed = _sampler(folder / "cuts.jsonl.gz", tokens, bins, world_size, rank)
        resumed.load_state_dict(state)
        assert resumed.epoch == 0 and resumed.steps_done == k
        iter(resumed)  # torch's multi-worker DataLoader calls iter() twice before the first batch
        rest = [(0, [c.id for c in batch]) for batch in resumed] + _run(resumed, [1])
        assert head + rest == full
        ids = [i for e, b in full if e == 0 for i in b]
        assert len(ids) == len(set(ids))  # within an epoch no cut twice (leftover duplicates get a suffix)


def test_state_at_the_end_of_an_epoch_starts_the_next(lazy_data, tmp_path):
    folder, tokens, bins = lazy_data
    full = _run(_sampler(folder / "cuts.jsonl.gz", tokens, bins), [0, 1])
    first = _sampler(folder / "cuts.jsonl.gz", tokens, bins)
    _run(first, [0])
    resumed = _sampler(folder / "cuts.jsonl.gz", tokens, bins)
    resumed.load_state_dict(_checkpoint_round_trip(first.state_dict(), tmp_path))
    assert resumed.epoch == 1
    assert [(1, [c.id for c in batch]) for batch in resumed] == [x for x in full if x[0] == 1]


def test_state_from_another_world_size_or_seed_is_refused(lazy_data):
    folder, tokens, bins = lazy_data
    first = _sampler(folder / "cuts.jsonl.gz", tokens, bins, world_size=2)
    first.set_epoch(0)
    next(iter(first))
    state = first.state_dict()
    with pytest.raises(ValueError, match="world_size=2 but this run has 1"):
        _sampler(folder / "cuts.jsonl.gz", tokens, bins).load_state_dict(state)


def _needed_records(state, rank):
    """Records (manifest lines) a restore of ``rank`` may read: its buffered and pending cuts, and those after
    the stream position (a single .jsonl source in file order: position p is record p)."""
    from speech_ed.sampling.state import unpack_batches, unpack_steps

    W = state["world_size"]
    queues = unpack_batches(state["planner"]["queues"])
    keys = {it[0] for i, q in enumerate(queues) if i % W == rank for it in q}
    for step in unpack_steps(state["pending"]):
        keys.update(it[0] for it in step.batches[rank])
    return keys, state["position"]


@pytest.mark.parametrize("world_size", [1, 2])
def test_restore_reads_only_this_ranks_buffered_lines(lazy_data, tmp_path, world_size):
    """Every line that is neither buffered for this rank nor after the position is overwritten with garbage
    before the restore: the resumed epoch is still exact, so the restore never read one of them."""
    folder, tokens, bins = lazy_data
    for rank in range(world_size):
        manifest = tmp_path / f"cuts{rank}.jsonl"
        manifest.write_bytes((folder / "cuts.jsonl").read_bytes())
        full = _run(_sampler(manifest, tokens, bins, world_size, rank), [0])
        first = _sampler(manifest, tokens, bins, world_size, rank)
        first.set_epoch(0)
        it = iter(first)
        for _ in range(6):
            next(it)
        state = first.state_dict()
        keep, position = _needed_records(state, rank)
        assert 0 < position < 400
        lines = manifest.read_bytes().split(b"\n")
        lines = [x if (i in keep or i >= position) else b"#" * len(x) for i, x in enumerate(lines)]
        manifest.write_bytes(b"\n".join(lines))  # same byte lengths: the index offsets stay valid
        resumed = _sampler(manifest, tokens, bins, world_size, rank, sources=first.sources)  # same index
        resumed.load_state_dict(state)
        assert [(0, [c.id for c in b]) for b in resumed] == full[6:]


def test_gzip_restore_reads_a_bounded_number_of_lines(lazy_data, tmp_path, monkeypatch):
    """Early and late positions: a restore reads the lines of its own buffered cuts only (never the epoch up
    to the position), through the gzip seek index."""
    from speech_ed.sampling import sources as sources_module

    folder, tokens, bins = lazy_data
    read = []
    real = sources_module.LineReader.get
    monkeypatch.setattr(sources_module.LineReader, "get", lambda self, i: read.append(i) or real(self, i))
    counts = []
    for k in (2, 30):
        first = _sampler(folder / "cuts.jsonl.gz", tokens, bins)
        first.set_epoch(0)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        keep, _ = _needed_records(state, 0)
        resumed = _sampler(folder / "cuts.jsonl.gz", tokens, bins)
        resumed.load_state_dict(state)
        read.clear()
        iter(resumed)
        counts.append(len(read))
        assert set(read) == keep  # exactly the buffered cuts of this rank, nothing before the position
    assert gzip_index_path(folder / "cuts.jsonl.gz").is_file()
    assert max(counts) <= 200, counts  # at most the buffer


# ---------------------------------------------------------------------------------------------- training level

class BatchRecorder(L.Callback):
    """Appends ``{"step", "epoch", "ids"}`` per trained batch to ``<dir>/rank<r>.jsonl`` (survives SIGKILL)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                "ids": batch["cut_ids"]}) + "\n")


class KillAfterCheckpoint(L.Callback):
    """SIGKILLs the whole process group as the step after ``step`` starts (its checkpoint is on disk then)."""

    def __init__(self, step: int, checkpoint: str):
        self.step, self.checkpoint = step, Path(checkpoint)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            assert torch.load(self.checkpoint, weights_only=False)["global_step"] == self.step
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _worker(spec_path: str) -> None:
    from speech_ed.config import load_config
    from speech_ed.training.train import train

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config([], spec["overrides"])
    callbacks = [BatchRecorder(spec["record_dir"])]
    if spec.get("kill_after_step"):
        callbacks.append(KillAfterCheckpoint(spec["kill_after_step"], cfg.run_dir / "checkpoints" / "last.ckpt"))
    train(cfg, callbacks=tuple(callbacks))


@pytest.fixture(scope="module")
def train_data(tmp_path_factory, tokenizer):
    """24 generated utterances (0.3-1.4 s) as train/dev/test manifests, and 2D bins estimated on them."""
    from lhotse import CutSet

    from speech_ed.data.prompt import count_decoder_tokens
    from speech_ed.sampling import save_bucket_bins
    from tests.conftest import TEXTS, make_cut

    folder = tmp_path_factory.mktemp("resume_data")
    cuts = CutSet.from_cuts(make_cut(folder, f"{lang}-{i}", texts[i % 4], lang, duration=0.3 + 0.1 * i)
                            for lang, texts in TEXTS.items() for i in range(12))
    for split in ("train", "dev", "test"):
        cuts.to_file(folder / f"cuts_{split}.jsonl.gz")
    d = np.array([c.duration for c in cuts])
    t = np.array([count_decoder_tokens(c, tokenizer) for c in cuts])
    save_bucket_bins(folder / "bins.yaml", estimate_bucket_bins(d, t, num_buckets=2, num_subbuckets=2))
    return folder, sorted(c.id for c in cuts)


def _launch(tmp_path, name, overrides, record_dir, kill_after_step=None, timeout=120):
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"overrides": overrides, "record_dir": str(record_dir),
                                "kill_after_step": kill_after_step}))
    env = {**os.environ, "SPEECH_ED_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "PYTHONPATH": str(ROOT)}
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, "-m", "tests.test_resume", str(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, start_new_session=True)
    return proc


def _records(folder, rank):
    return [json.loads(line) for line in (Path(folder) / f"rank{rank}.jsonl").read_text().splitlines()]


def test_a_sampler_state_of_the_older_format_resumes_training_with_a_fresh_epoch(train_data, tokenizer, tmp_path):
    """Checkpoints written before the scale-correct sampler: weights resume, the epoch restarts (warned)."""
    from speech_ed.config import load_config
    from speech_ed.data.datamodule import AEDDataModule

    folder, _ = train_data
    cfg = load_config([], ["model_preset=tiny", f"exp_dir={tmp_path}", f"data.manifest_dir={folder}",
                           f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                           "prepare.languages=[es,it]", "data.sampler=random", "data.max_duration_s=3",
                           "data.max_utterance_s=2", "data.num_workers=0"])
    dm = AEDDataModule(cfg, tokenizer)
    old = {"epoch": 3, "world_size": 1, "rank": 0, "seed": 0, "strategy": "random", "kind": "jsonl",
           "position": [0, 5, 100], "planner": {"buckets": [[]]}, "pending": [], "steps_done": 5}
    dm.load_state_dict({"sampler": old, "filter_rejected": {}})
    with pytest.warns(UserWarning, match="older speech_ed: training resumes"):
        dm.train_dataloader()
    assert dm.sampler.epoch == 3 and dm.sampler.steps_done == 0


@pytest.mark.slow
@pytest.mark.parametrize("devices, max_steps, kill_at", [(1, 10, 4), (2, 7, 3)], ids=["1proc", "ddp2"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tokenizer, train_data, devices,
                                                             max_steps, kill_at):
    folder, all_ids = train_data
    base = ["model_preset=tiny", f"data.manifest_dir={folder}", f"tokenizer.path={tokenizer.model_path}",
            "tokenizer.languages=[en,es,it]", "prepare.languages=[es,it]", f"trainer.max_steps={max_steps}",
            "optim.warmup_steps=2", "trainer.accelerator=cpu", f"trainer.devices={devices}",
            f"trainer.strategy={'ddp' if devices > 1 else 'auto'}", "trainer.precision=32-true",
            "trainer.num_threads=1", f"trainer.checkpoint_every_n_steps={kill_at}", "data.sampler=2d",
            f"data.bucket_bins={folder / 'bins.yaml'}", "data.strict_2d=false", "data.max_duration_s=3",
            "data.max_utterance_s=2", f"data.num_workers={1 if devices == 1 else 0}"]
    straight = base + [f"exp_dir={tmp_path}/straight"]
    broken = base + [f"exp_dir={tmp_path}/broken"]
    procs = [_launch(tmp_path, "straight", straight, tmp_path / "rec_straight"),
             _launch(tmp_path, "killed", broken, tmp_path / "rec_killed", kill_after_step=kill_at)]
    assert procs[0].returncode == 0, procs[0].stderr[-3000:]
    assert procs[1].returncode == -signal.SIGKILL, procs[1].stderr[-3000:]
    assert not (tmp_path / "broken" / "espeak_multilingual" / "default" / "model.pt").exists()
    procs.append(_launch(tmp_path, "resumed", broken, tmp_path / "rec_resumed"))
    assert procs[2].returncode == 0, procs[2].stderr[-3000:]
    assert "resuming from" in procs[2].stdout

    for rank in range(devices):
        full = _records(tmp_path / "rec_straight", rank)
        killed = _records(tmp_path / "rec_killed", rank)
        resumed = _records(tmp_path / "rec_resumed", rank)
        assert [r["step"] for r in full] == list(range(1, max_steps + 1))
        assert killed == full[:kill_at]
        assert resumed == full[kill_at:]  # same cut ids, same order, same epochs
    # every completed epoch trained on every cut exactly once (over all ranks)
    by_epoch: dict[int, list[str]] = {}
    for rank in range(devices):
        for r in _records(tmp_path / "rec_killed", rank) + _records(tmp_path / "rec_resumed", rank):
            by_epoch.setdefault(r["epoch"], []).extend(r["ids"])
    assert len(by_epoch) >= 2, "the runs should cross an epoch boundary"
    for epoch in sorted(by_epoch)[:-1]:
        assert sorted(by_epoch[epoch]) == all_ids

    a = torch.load(tmp_path / "straight/espeak_multilingual/default/model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "broken/espeak_multilingual/default/model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


if __name__ == "__main__":
    _worker(sys.argv[1])
