"""The SLURM script: `make slurm` renders it, bash accepts it, a requeued job resumes the newest ckpt."""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from speech_ed.commands import slurm
from speech_ed.slurm import render_sbatch

REPO = Path(__file__).resolve().parents[1]
LIBRISPEECH = str(REPO / "recipes" / "librispeech" / "config.yaml")


def test_make_slurm_renders_a_script_bash_accepts(tmp_path):
    cmd = ["make", "-s", "-o", "install", "slurm", "RECIPE=librispeech", "NODES=2", "GPUS_PER_NODE=4",
           "TIME=2-00:00:00", "PARTITION=gpu", f"VENV={sys.prefix}", "ARGS=run=ls960 optim.lr=1e-3"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    script = proc.stdout
    (tmp_path / "train.sbatch").write_text(script)
    check = subprocess.run(["bash", "-n", str(tmp_path / "train.sbatch")], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    assert script.startswith("#!/bin/bash") and "{{" not in script
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue",
                 "#SBATCH --partition=gpu", "#SBATCH --job-name=librispeech-ls960"):
        assert line in script.splitlines(), line
    srun = script[script.index("srun "):]
    assert f"--config {LIBRISPEECH}" in srun and "run=ls960 optim.lr=1e-3" in srun
    assert "trainer.devices=4 trainer.num_nodes=2" in srun and '"trainer.resume_from=$RESUME"' in srun


def _run_rendered(tmp_path, script: str) -> str:
    """Execute the script with a stand-in `srun` that prints its arguments; returns what it printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text('#!/bin/bash\necho "SRUN $* WANDB_RUN_ID=$WANDB_RUN_ID"\n')
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "job.sbatch").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env = {**env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], capture_output=True, text=True, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_requeued_job_resumes_from_the_newest_checkpoint(tmp_path):
    script, run_dir = render_sbatch([LIBRISPEECH], [f"exp_dir={tmp_path}/exp", "run=r"], nodes=1, gpus_per_node=2)
    assert run_dir == (tmp_path / "exp" / "librispeech" / "r").resolve()
    assert "trainer.resume_from=last" in _run_rendered(tmp_path, script)  # first start: nothing to resume

    (run_dir / "checkpoints").mkdir(parents=True)
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"x")
    assert f"trainer.resume_from={last}" in _run_rendered(tmp_path, script)
    hpc.write_bytes(b"x")  # Lightning's SIGUSR1 checkpoint, written after last.ckpt
    os.utime(hpc, (time.time() + 5, time.time() + 5))
    out = _run_rendered(tmp_path, script)
    assert f"trainer.resume_from={hpc}" in out  # srun got the requeue checkpoint
    assert "WANDB_RUN_ID=librispeech-r-4242" in out  # and the W&B run of this job, which a requeue keeps


def test_bad_override_fails_before_rendering(capsys):
    args = argparse.Namespace(config=[LIBRISPEECH], overrides=["trainer.devicez=2"], nodes=1, gpus_per_node=8,
                              time="24:00:00", cpus_per_task=None, partition=None, account=None, out=None,
                              submit=False)
    assert slurm.main(args) == 2
    err = capsys.readouterr()
    assert "trainer.devicez" in err.err and "#SBATCH" not in err.out
    args.overrides, args.time = [], "tomorrow"
    assert slurm.main(args) == 2
    assert "--time 'tomorrow'" in capsys.readouterr().err
