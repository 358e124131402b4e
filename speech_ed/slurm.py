"""The SLURM batch script for multi-node training: render it from ``recipes/slurm/train.sbatch``, write, submit.

Usage::

    script, run_dir = render_sbatch(["recipes/librispeech/config.yaml"], ["run=ls960"], nodes=2, gpus_per_node=8)
    path = write_sbatch(script, run_dir)             # <run_dir>/slurm/train.sbatch (and SLURM's log folder)
    returncode = submit_sbatch(path)

The template holds ``{{name}}`` placeholders, nothing else. The config and the ``key=value`` overrides are
validated first, so a typo fails on the login node rather than in the queue. ``speech-ed slurm`` calls these.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from speech_ed.atomic import atomic_write_text
from speech_ed.config import load_config
from speech_ed.paths import RunPaths

REPO_DIR = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_DIR / "recipes" / "slurm" / "train.sbatch"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")


def render_template(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}`` in ``template``; a placeholder without a value is an error.

    Raises:
        KeyError: naming the placeholders that have no value.
    """
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for placeholders {missing} in the SLURM template")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def render_sbatch(config_paths: list[str], overrides: list[str], nodes: int, gpus_per_node: int,
                  time_limit: str = "24:00:00", cpus_per_task: int | None = None,
                  partition: str | None = None, account: str | None = None,
                  template: Path = TEMPLATE) -> tuple[str, Path]:
    """The batch script for training ``config_paths`` + ``overrides`` on ``nodes`` x ``gpus_per_node`` GPUs.

    Returns:
        ``(script, run_dir)``; ``run_dir`` is absolute.

    Raises:
        ConfigError: a bad config or override (checked before anything is rendered).
        ValueError: impossible nodes, GPUs, CPUs or time limit.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"--nodes and --gpus-per-node must be >= 1, got {nodes} and {gpus_per_node}")
    if not _TIME.match(time_limit):
        raise ValueError(f"--time {time_limit!r}: use SLURM's [D-]HH:MM:SS, e.g. 48:00:00 or 2-00:00:00")
    launch = ["trainer.accelerator=gpu", f"trainer.devices={gpus_per_node}", f"trainer.num_nodes={nodes}"]
    cfg = load_config(config_paths, [*overrides, *launch])  # what each task will load, minus resume
    cpus = cpus_per_task if cpus_per_task is not None else cfg.data.num_workers + 2
    if cpus < 1:
        raise ValueError(f"--cpus-per-task must be >= 1, got {cpus}")
    run_dir = (REPO_DIR / RunPaths.from_config(cfg).run_dir).resolve()
    extra = [f"#SBATCH --partition={partition}"] if partition else []
    extra += [f"#SBATCH --account={account}"] if account else []
    speech_ed = Path(sys.executable).with_name("speech-ed")
    values = {
        "job_name": f"{cfg.recipe}-{cfg.run}", "nodes": str(nodes), "gpus_per_node": str(gpus_per_node),
        "cpus_per_task": str(cpus), "time": time_limit, "log_dir": shlex.quote(str(run_dir / "slurm")),
        "extra_sbatch": "\n".join(extra), "repo_dir": shlex.quote(str(REPO_DIR)),
        "run_dir": shlex.quote(str(run_dir)), "speech_ed": shlex.quote(str(speech_ed)),
        "config_args": " ".join(f"--config {shlex.quote(str(Path(c).resolve()))}" for c in config_paths),
        "overrides": " ".join(shlex.quote(o) for o in overrides),
        "rendered_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    return render_template(Path(template).read_text(), values), run_dir


def write_sbatch(script: str, run_dir: Path, out: Path | None = None) -> Path:
    """Write ``script`` to ``out`` (default ``<run_dir>/slurm/train.sbatch``) atomically and create
    ``<run_dir>/slurm``, where SLURM writes its log (SLURM does not create the ``--output`` folder)."""
    slurm_dir = Path(run_dir) / "slurm"
    out = Path(out) if out else slurm_dir / "train.sbatch"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, script)
    return out


def submit_sbatch(path: Path) -> int:
    """``sbatch path``; returns its exit status.

    Raises:
        FileNotFoundError: ``sbatch`` is not on PATH (not a SLURM login node).
    """
    if shutil.which("sbatch") is None:
        raise FileNotFoundError(f"sbatch is not on PATH; submit {path} from a SLURM login node")
    return subprocess.run(["sbatch", str(path)], check=False).returncode
