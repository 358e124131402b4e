"""``speech-ed slurm``: render the SLURM batch script for multi-node training; print, write or submit it.

Usage::

    speech-ed slurm --config recipes/librispeech/config.yaml --nodes 2 --gpus-per-node 8 --time 48:00:00 \\
        --partition gpu run=ls960 > train.sbatch          # print (make slurm RECIPE=librispeech NODES=2 ...)
    speech-ed slurm --config recipes/librispeech/config.yaml --nodes 4 --submit          # write + sbatch

The template is ``recipes/slurm/train.sbatch``: ``{{name}}`` placeholders, nothing else. The config and the
``key=value`` overrides are validated here first, so a typo fails on the login node rather than in the queue.
With ``--submit`` the script is written to ``<run_dir>/slurm/train.sbatch`` (SLURM's log folder is created
next to it) and handed to ``sbatch``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from speech_ed.config import ConfigError, load_config

REPO_DIR = Path(__file__).resolve().parents[2]
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
    run_dir = (REPO_DIR / cfg.run_dir).resolve()
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


def add_arguments(parser) -> None:
    parser.add_argument("--config", action="append", required=True, help="YAML config (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for training")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8, help="also the tasks per node")
    parser.add_argument("--time", default="24:00:00", help="SLURM time limit per job (requeue continues)")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default: data.num_workers + 2")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--out", default=None, help="write the script here instead of printing it")
    parser.add_argument("--submit", action="store_true",
                        help="write <run_dir>/slurm/train.sbatch and sbatch it")


def main(args) -> int:
    try:
        script, run_dir = render_sbatch(args.config, args.overrides, args.nodes, args.gpus_per_node,
                                        args.time, args.cpus_per_task, args.partition, args.account)
    except (ConfigError, ValueError, KeyError) as e:
        print(f"slurm: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run_dir / "slurm" / "train.sbatch" if args.submit else None
    if out is None:
        print(script, end="")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output folder
    out.write_text(script)
    print(f"slurm: wrote {out}")
    if not args.submit:
        return 0
    if shutil.which("sbatch") is None:
        print(f"slurm: error: sbatch is not on PATH; submit {out} from a SLURM login node", file=sys.stderr)
        return 2
    return subprocess.run(["sbatch", str(out)], check=False).returncode
