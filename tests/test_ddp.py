"""Two CPU processes (gloo) train with the 2D bucketing sampler under DDP, launched as documented (torchrun).

Each rank records, per step, the cut ids it trained on; the test then checks what data parallelism with
synchronised buckets promises: ranks see disjoint data, all ranks draw from the same bucket at every step, and
they finish with the same number of steps (an extra step on one rank would hang or desynchronise DDP).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import CutSet

from speech_ed.data.prompt import count_decoder_tokens
from speech_ed.sampling import BucketBins
from speech_ed.sampling.assignment import BucketAssigner
from speech_ed.sampling.io import save_bucket_bins
from tests.conftest import TEXTS, make_cut

TORCHRUN = Path(sys.executable).with_name("torchrun")

# Runs in each rank: the real `speech_ed.training.train.train`, with one more callback that writes down every
# step's cut ids and the bucket the throughput logger logs for it, to rank<R>.json.
WORKER = '''
import json, sys
from pathlib import Path

import lightning as L

from speech_ed.config import load_config
from speech_ed.training.callbacks import bucket_finder
from speech_ed.training.train import train

out = Path(sys.argv[1])


class StepRecorder(L.Callback):
    def __init__(self):
        self.steps, self.bucket = [], None

    def on_train_start(self, trainer, pl_module):
        self.bucket = bucket_finder(trainer.datamodule, 16000)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({"epoch": trainer.current_epoch, "batch_idx": batch_idx,
                           "cut_ids": batch["cut_ids"], "logged_bucket": self.bucket(batch)})

    def on_train_end(self, trainer, pl_module):
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "global_step": trainer.global_step, "steps": self.steps}
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


train(load_config([], sys.argv[2:]), callbacks=(StepRecorder(),))
'''


def _corpus(tmp_path, tokenizer):
    """16 cuts of 0.5 s (bucket 0) and 8 of 1.0 s (bucket 1): 2 + 2 full steps per epoch for 2 ranks."""
    audio = tmp_path / "audio"
    audio.mkdir()
    texts = [t for v in TEXTS.values() for t in v]
    cuts = [make_cut(audio, f"short-{i:02d}", texts[i % 8], "es" if i % 8 < 4 else "it", duration=0.5)
            for i in range(16)]
    cuts += [make_cut(audio, f"long-{i:02d}", texts[i % 8], "es" if i % 8 < 4 else "it", duration=1.0)
             for i in range(8)]
    man = tmp_path / "manifests"
    man.mkdir()
    for split in ("train", "dev", "test"):
        CutSet.from_cuts(cuts).to_file(man / f"cuts_{split}.jsonl.gz")
    bins = BucketBins(durations=[0.6, 1.2], tokens=[200, 200], method="manual")
    save_bucket_bins(tmp_path / "bucket_bins.yaml", bins)
    assigner = BucketAssigner(bins)
    bucket_of = {c.id: assigner.assign(c.duration, count_decoder_tokens(c, tokenizer))[0] for c in cuts}
    return man, tmp_path / "bucket_bins.yaml", bucket_of


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed in this environment")
def test_two_process_ddp_with_bucketing_sampler(tmp_path, tokenizer):
    man, bins_path, bucket_of = _corpus(tmp_path, tokenizer)
    assert sorted(set(bucket_of.values())) == [0, 1]
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "ranks"
    out.mkdir()
    overrides = ["model_preset=tiny", f"exp_dir={tmp_path}/exp", "run=ddp", f"data.manifest_dir={man}",
                 f"tokenizer.path={tokenizer.model_path}", "tokenizer.languages=[en,es,it]",
                 "prepare.languages=[es,it]", "data.sampler=2d", f"data.bucket_bins={bins_path}",
                 "data.max_duration_s=2.0", "data.max_utterance_s=1.5", "data.num_workers=0",
                 "data.sortagrad=false", "trainer.max_steps=6", "optim.warmup_steps=1",
                 "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                 "trainer.precision=32-true", "trainer.num_threads=1", "trainer.log_every_n_steps=1",
                 "trainer.checkpoint_every_n_steps=100"]
    cmd = [str(TORCHRUN), "--standalone", "--nnodes=1", "--nproc_per_node=2", str(tmp_path / "worker.py"),
           str(out), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # equal step counts, and the same (epoch, batch) sequence: 4 steps in epoch 0, then 2 in epoch 1
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 6
    positions = [[(s["epoch"], s["batch_idx"]) for s in r["steps"]] for r in ranks]
    assert positions[0] == positions[1] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]

    for step0, step1 in zip(ranks[0]["steps"], ranks[1]["steps"]):
        ids0, ids1 = set(step0["cut_ids"]), set(step1["cut_ids"])
        assert ids0 and ids1 and not ids0 & ids1  # disjoint at every step
        buckets = {bucket_of[i] for i in ids0 | ids1}
        assert len(buckets) == 1, buckets  # both ranks drew from one bucket
        assert step0["logged_bucket"] == step1["logged_bucket"] == buckets.pop()

    epoch0 = [[i for s in r["steps"] if s["epoch"] == 0 for i in s["cut_ids"]] for r in ranks]
    assert not set(epoch0[0]) & set(epoch0[1])  # disjoint over the epoch
    assert sorted(epoch0[0] + epoch0[1]) == sorted(bucket_of)  # and together every cut exactly once
    assert {bucket_of[s["cut_ids"][0]] for s in ranks[0]["steps"]} == {0, 1}
    assert (tmp_path / "exp" / "espeak_multilingual" / "ddp" / "model.pt").is_file()  # rank 0 exported

