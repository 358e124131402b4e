"""Every command of the user-facing pages runs as written, so the pages cannot drift from the code.

Pages: ``recipes/*/README.md`` (espeak_multilingual, librispeech, slurm), ``docs/DECODING.md`` and
``docs/WANDB.md``, in that order (the decoding page uses the embedded run, the W&B page the LibriSpeech run, that
the recipe pages make). Each fenced ``bash`` block runs as one bash
script (``set -euo pipefail``), verbatim, in a scratch folder that looks like a checkout (``Makefile``,
``recipes/``, ``scripts/``, ``conf/``, ``pyproject.toml`` linked in) with these stand-ins, and nothing else
changed:

* ``.venv`` is a stand-in venv whose ``bin/speech-ed`` (also first on ``PATH``, for a bare ``speech-ed``) adds
  the tiny settings of ``TINY`` after the command's own ``key=value`` overrides of ``recipe``, ``train``,
  ``evaluate`` and ``slurm`` (so they win: tiny preset, 3 steps, CPU, one device, a few utterances), then runs
  the real ``speech-ed``. ``make`` uses it through its ``VENV ?= .venv``.
* ``/data/librispeech`` is replaced by a fake LibriSpeech (``speech-ed fake-librispeech``'s generator).
* ``sbatch`` runs the script with bash and SLURM-like variables; ``srun`` runs its task once on this CPU
  (``trainer.accelerator=cpu trainer.devices=1 trainer.num_nodes=1`` appended); ``torchrun`` runs its command
  once; ``wandb sync`` checks that each offline run it is given exists. ``WANDB_MODE=offline``.

The quick test runs every block with the stand-in ``speech-ed`` only recording its arguments, then parses each
recorded command with its real parser, resolves and validates every config, and checks the flow: a command that
trains reads manifests an earlier command prepared, and one that evaluates reads a run an earlier command
trained. The slow test runs everything for real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(REPO.glob("recipes/*/README.md")) + [REPO / "docs" / "DECODING.md", REPO / "docs" / "WANDB.md"]
TAKES_OVERRIDES = ("recipe", "train", "evaluate", "slurm")
TINY = ["model_preset=tiny", "prepare.num_train=12", "prepare.num_dev=2", "prepare.num_test=3",
        "prepare.num_workers=1", "prepare.train_parts=[train-clean-100]", "prepare.dev_parts=[dev-clean]",
        "prepare.test_parts=[test-clean]", "tokenizer.vocab_size=80", "data.num_buckets=2",
        "data.num_sub_buckets=2", "data.num_workers=0", "data.max_duration_s=30", "data.max_utterance_s=20",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=3",
        "trainer.max_time_min=null", "optim.warmup_steps=1", "trainer.val_every_n_steps=0",
        "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=2", "oomptimize.probe=simulate",
        "oomptimize.memory_budget_gib=0.05", "eval.batch_size=8"]
FAKE_DATA = "/data/librispeech"

SPEECH_ED = '''#!{python}
"""Stand-in speech-ed (tests/test_docs_commands.py): record the call; in run mode add TINY and run it."""
import json, os, sys
args = sys.argv[1:]
if args and args[0] in {takes!r}:
    kv = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    at = kv[-1] + 1 if kv else len(args)
    args = args[:at] + json.loads(os.environ["DOCS_TINY"]) + args[at:]
with open(os.environ["DOCS_LOG"], "a") as f:
    f.write(json.dumps({{"args": args, "cwd": os.getcwd(), "page": os.environ.get("DOCS_PAGE")}}) + "\\n")
if os.environ["DOCS_MODE"] == "run":
    os.execv({real!r}, [{real!r}, *args])
'''
SBATCH = '''#!/bin/bash
echo "sbatch (stand-in): running $1 here"
SLURM_JOB_ID=4242 SLURM_RESTART_COUNT=0 SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=localhost bash "$1"
'''
SRUN = '''#!/bin/bash
# srun (stand-in): drop srun's options, run the task once on this CPU
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@" trainer.accelerator=cpu trainer.devices=1 trainer.num_nodes=1
'''
TORCHRUN = '''#!/bin/bash
# torchrun (stand-in): drop torchrun's options, run the command once
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
'''
WANDB = '''#!/bin/bash
# wandb (stand-in): `wandb sync RUN_DIR...` checks every offline run exists (never uploads)
[ "$1" = sync ] || { echo "wandb stand-in: only 'sync'" >&2; exit 2; }
shift
[ "$DOCS_MODE" = run ] || exit 0
for d in "$@"; do ls "$d"/run-*.wandb >/dev/null || { echo "wandb sync: no offline run at $d" >&2; exit 1; }; done
echo "wandb sync (stand-in): $# run(s) found"
'''


def bash_blocks(page: Path) -> list[str]:
    """The fenced ``bash`` blocks of a Markdown page, as written."""
    return re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)


def make_workspace(tmp: Path, mode: str, fake_data: Path) -> tuple[Path, dict]:
    """The scratch checkout with stand-ins; returns (folder, environment)."""
    work = tmp / "work"
    work.mkdir()
    for name in ("Makefile", "recipes", "scripts", "conf", "pyproject.toml"):
        (work / name).symlink_to(REPO / name)
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    real = str(Path(sys.executable).with_name("speech-ed"))
    tools = {venv_bin / "speech-ed": SPEECH_ED.format(python=sys.executable, takes=TAKES_OVERRIDES, real=real),
             tmp / "bin" / "sbatch": SBATCH, tmp / "bin" / "srun": SRUN, tmp / "bin" / "torchrun": TORCHRUN,
             tmp / "bin" / "wandb": WANDB}
    for path, text in tools.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    (work / ".venv" / ".installed").touch()  # scripts/install.sh: nothing to install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_", "VENV"))}
    env.update({"PATH": f"{tmp / 'bin'}:{venv_bin}:{env['PATH']}", "DOCS_MODE": mode,
                "DOCS_LOG": str(tmp / "calls.jsonl"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "DOCS_TINY": json.dumps(TINY + [f"exp_dir={work / 'exp'}"]), "OMP_NUM_THREADS": "2"})
    env["FAKE_DATA"] = str(fake_data)
    return work, env


def run_pages(tmp: Path, mode: str, fake_data: Path, timeout: int) -> list[dict]:
    """Run every block of every page; returns the recorded speech-ed calls (with page and block)."""
    work, env = make_workspace(tmp, mode, fake_data)
    for page in PAGES:
        blocks = bash_blocks(page)
        assert blocks, f"{page} has no bash block"
        for i, block in enumerate(blocks):
            script = "set -euo pipefail\n" + block.replace(FAKE_DATA, str(fake_data))
            env["DOCS_PAGE"] = f"{page.relative_to(REPO)}#{i}"
            proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            assert proc.returncode == 0, (f"{env['DOCS_PAGE']} failed:\n{block}\n--- stdout\n"
                                          f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    log = tmp / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def check_call(call: dict, resolved: dict | None = None) -> dict:
    """Parse a recorded call with its real parser; resolve its config. Returns what the flow check needs.

    ``resolved`` maps ``<run_dir>/config.resolved.yaml`` of the runs earlier calls train to their configs: in
    check mode nothing ran, so a command reading that file (``speech-ed evaluate --config ...``) gets the config
    the earlier command would have saved there.
    """
    import argparse
    import importlib

    from speech_ed.cli import COMMANDS
    from speech_ed.config import load_config as _load_config

    resolved = {} if resolved is None else resolved

    def load_config(paths, overrides):
        paths = [resolved.get(str((cwd / p).resolve()), p) for p in paths]
        return _load_config(paths, overrides)

    sub, rest = call["args"][0], call["args"][1:]
    assert sub in COMMANDS, f"{call['page']}: unknown command {sub!r}"
    parser = argparse.ArgumentParser(prog=f"speech-ed {sub}")
    module = importlib.import_module(COMMANDS[sub][0])
    module.add_arguments(parser)
    args = parser.parse_args(rest)  # SystemExit (a failure) on a wrong flag
    cwd = Path(call["cwd"])
    info = {"page": call["page"], "sub": sub}

    def absolute(cfg):
        run_dir = cwd / cfg.run_dir
        man = Path(cfg.data.manifest_dir) if cfg.data.manifest_dir else run_dir / "manifests"
        return str(run_dir.resolve()), str((cwd / man).resolve())

    os.chdir(cwd)  # relative config paths (recipes/...) are the checkout's
    try:
        if sub == "recipe":
            from speech_ed.recipe import load_recipe, parse_recipe_args

            recipe = load_recipe(args.name)
            cfg, rargs = parse_recipe_args(args.rest, Path(recipe.__file__).with_name("config.yaml"),
                                           len(recipe.STAGES))
            info["stages"] = [n for k, (n, _) in enumerate(recipe.STAGES) if rargs.stage <= k <= rargs.stop_stage]
            info["run_dir"], info["manifest_dir"] = absolute(cfg)
            info["cfg"] = cfg
        elif sub in ("train", "evaluate"):
            cfg = load_config(args.config, args.overrides)
            info["stages"] = [sub]
            info["run_dir"], info["manifest_dir"] = absolute(cfg)
            info["cfg"] = cfg
        elif sub == "slurm":
            from speech_ed.slurm import render_sbatch

            script, _ = render_sbatch(args.config, args.overrides, args.nodes, args.gpus_per_node, args.time,
                                      args.cpus_per_task, args.partition, args.account)
            assert "{{" not in script
            cfg = load_config(args.config, args.overrides)
            info["stages"] = ["train"] if args.submit else []
            info["run_dir"], info["manifest_dir"] = absolute(cfg)
            info["cfg"] = cfg
    finally:
        os.chdir(REPO)
    return info


def check_flow(infos: list[dict]) -> None:
    """Training reads manifests an earlier command prepared; evaluation reads a run an earlier command trained."""
    prepared, trained = set(), set()
    for info in infos:
        stages = info.get("stages", [])
        if {"prepare", "manifests"} & set(stages):
            prepared.add(info["manifest_dir"])
        if "train" in stages:
            assert info["manifest_dir"] in prepared, (
                f"{info['page']}: `speech-ed {info['sub']}` trains on {info['manifest_dir']}, which no earlier "
                f"documented command prepares (prepared: {sorted(prepared)})")
            trained.add(info["run_dir"])
        if "evaluate" in stages:
            assert info["run_dir"] in trained, (
                f"{info['page']}: evaluates {info['run_dir']}, which no earlier documented command trains")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_librispeech")
    if shutil.which("espeak-ng") is not None:
        from speech_ed.corpora.fake_librispeech import make_fake_librispeech

        make_fake_librispeech(root, {"train-clean-100": 40, "dev-clean": 4, "test-clean": 4}, num_workers=2)
    return root


def test_every_documented_command_parses_validates_and_flows(tmp_path):
    calls = run_pages(tmp_path, "check", tmp_path / "no_data", timeout=300)
    pages = {c["page"].split("#")[0] for c in calls}
    assert pages == {str(p.relative_to(REPO)) for p in PAGES}, pages  # every page calls speech-ed
    from speech_ed.config import save_config

    infos, resolved = [], {}
    for call in calls:
        info = check_call(call, resolved)
        if "train" in info.get("stages", []):  # what training would save as <run_dir>/config.resolved.yaml
            path = tmp_path / f"resolved_{len(resolved)}.yaml"
            save_config(info["cfg"], path)
            resolved[str(Path(info["run_dir"]) / "config.resolved.yaml")] = str(path)
        infos.append(info)
    assert {"recipe", "train", "slurm", "evaluate", "transcribe", "padding-report",
            "wandb-workspace"} <= {i["sub"] for i in infos}
    assert sum(i["sub"] == "train" for i in infos) >= 5  # the two one-node launches and the sampler loop's three
    check_flow(infos)


def test_flow_check_catches_a_run_that_was_never_prepared(tmp_path):
    """The bug this test was written for: prepare with the default run, then train run=ls960."""
    prep = {"page": "p", "sub": "recipe", "stages": ["download", "manifests"], "manifest_dir": "/e/default/m",
            "run_dir": "/e/default"}
    train = {"page": "p", "sub": "slurm", "stages": ["train"], "manifest_dir": "/e/ls960/m", "run_dir": "/e/ls960"}
    with pytest.raises(AssertionError, match="no earlier"):
        check_flow([prep, train])
    check_flow([prep, {**train, "manifest_dir": "/e/default/m", "run_dir": "/e/default"}])


def test_bad_documented_override_is_caught(tmp_path):
    from speech_ed.config import ConfigError

    call = {"page": "p", "cwd": str(REPO), "args": ["train", "--config", "recipes/librispeech/config.yaml",
                                                     "data.sampler=random"]}
    with pytest.raises(ConfigError, match="bucket_batch_sizes"):  # what the old sampler loop hit
        check_call(call)


@pytest.mark.bench
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_every_documented_command_runs(tmp_path, fake_data):
    calls = run_pages(tmp_path, "run", fake_data, timeout=900)
    work = tmp_path / "work" / "exp"
    for run in ("espeak_multilingual/default", "espeak_multilingual/lr1e-3", "librispeech/default",
                "librispeech/ls960"):
        for name in ("model.pt", "results.json"):
            assert (work / run / name).is_file(), (run, name)
    for s in ("random", "lhotse", "2d"):
        assert (work / "librispeech" / f"sampler-{s}" / "model.pt").is_file(), s
    assert (work / "librispeech" / "ls960" / "slurm" / "train.sbatch").is_file()  # submitted, run by sbatch
    assert json.loads((work / "librispeech" / "padding_workspace.json").read_text())["sections"]
    assert any(shlex.join(c["args"]).startswith("slurm") for c in calls)
