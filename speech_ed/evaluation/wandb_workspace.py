"""The W&B padding comparison as data: a workspace spec built offline, instead of a list of clicks.

Usage::

    spec = padding_workspace("speech_ed", padding_group="ls960-padding", training_runs=["librispeech/sampler-2d"])
    missing = missing_metrics(spec, {"padding": {"input_padding", ...}, "training": {"train/all_ranks/...", ...}})

The spec mirrors the objects of W&B's workspace API (the ``wandb-workspaces`` package: ``Workspace`` with
``Section`` s of ``BarPlot`` / ``LinePlot`` / ``ScatterPlot`` panels over a runset), field for field, so it can be
turned into a saved workspace view where that package and an account are available; speech_ed itself never
talks to the W&B server. Two sections:

* ``padding``: the runs of one ``speech-ed padding-report --wandb --wandb-group G`` (one run per strategy, named
  after it): bar charts of ``input_padding`` / ``output_padding`` and of what the padding bought
  (``mean_batch_size``, ``num_batches``).
* ``training``: training runs (e.g. one per ``data.sampler``: random, 1d, 2d, lhotse): padding and throughput summed over all ranks against
  ``trainer/global_step``, and the per-bucket batch sizes (``train/bucket`` against ``train/batch_size``).
"""

from __future__ import annotations

SPEC_VERSION = "speech_ed.wandb_workspace/1"
STEP = "trainer/global_step"


def padding_workspace(project: str, padding_group: str, training_runs: list[str] = (), entity: str = "",
                      name: str = "Padding comparison") -> dict:
    """The workspace spec (see the module docstring).

    Args:
        project: W&B project (``trainer.wandb_project``).
        padding_group: the ``--wandb-group`` of the padding report.
        training_runs: display names of training runs to compare (``<recipe>/<run>``); empty: every run that
            is neither an evaluation nor a padding report.
        entity: W&B entity (empty: the account's default).
        name: the saved view's name.
    """
    if not project or not padding_group:
        raise ValueError("project and padding_group must be non-empty")
    padding_runset = {"filters": {"group": padding_group, "job_type": "padding-report"}}
    training_runset = ({"filters": {"display_name_in": list(training_runs)}} if training_runs
                       else {"filters": {"display_name_regex": ".*", "job_type_not_in": ["eval", "padding-report"]}})
    return {
        "version": SPEC_VERSION,
        "Workspace": {"name": name, "entity": entity, "project": project},
        "sections": [
            {"key": "padding", "Section": {"name": f"Padding by batching strategy ({padding_group})", "is_open": True},
             "runset": padding_runset,
             "panels": [
                 {"type": "BarPlot", "title": "Padding ratio (padded / all)",
                  "metrics": ["input_padding", "output_padding"], "label": "run name (the strategy)"},
                 {"type": "BarPlot", "title": "What the padding bought",
                  "metrics": ["mean_batch_size", "num_batches", "cuts_dropped"]},
             ]},
            {"key": "training", "Section": {"name": "Padding and throughput during training (all ranks)",
                                            "is_open": True},
             "runset": training_runset,
             "panels": [
                 {"type": "LinePlot", "title": "Input padding, all ranks", "x": STEP,
                  "y": ["train/all_ranks/input_padding"], "smoothing_factor": 0.8},
                 {"type": "LinePlot", "title": "Output padding, all ranks", "x": STEP,
                  "y": ["train/all_ranks/output_padding"], "smoothing_factor": 0.8},
                 {"type": "LinePlot", "title": "Audio seconds per second, all ranks", "x": STEP,
                  "y": ["train/all_ranks/audio_s_per_s"], "smoothing_factor": 0.8},
                 {"type": "ScatterPlot", "title": "Batch size per bucket (rank 0)", "x": "train/bucket",
                  "y": "train/batch_size"},
             ]},
        ],
    }


def panel_metrics(panel: dict) -> set[str]:
    """Every metric name a panel reads (its axes included)."""
    names = set(panel.get("metrics", []))
    for axis in ("x", "y"):
        value = panel.get(axis)
        names.update(value if isinstance(value, list) else [value] if value else [])
    return names


def missing_metrics(spec: dict, logged: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per section key, the panel metrics that its runs did not log (``logged``: section key -> names)."""
    out = {}
    for section in spec["sections"]:
        want = set().union(*(panel_metrics(p) for p in section["panels"]))
        have = logged.get(section["key"], set())
        missing = sorted(want - have)
        if missing:
            out[section["key"]] = missing
    return out
