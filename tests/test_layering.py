"""The package layering the design depends on, read from the import lines (scripts/import_graph.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from import_graph import package_graph  # noqa: E402

GRAPH = package_graph(ROOT / "speech_ed")


def test_the_graph_is_read_from_the_sources():
    # a sanity check of the reader itself: edges that must exist (the trainer builds the model and the sampler)
    assert {"models", "sampling", "config", "data"} <= GRAPH["training"]
    assert "training" in GRAPH["experiments"]


def test_models_import_nothing_of_the_project():
    # the model code is usable (and testable) alone, like whisper's model.py: .nemo dispatch lives in evaluation
    assert GRAPH["models"] == set()


def test_the_sampling_core_is_pure():
    # sampling plans batches from lengths; it must not reach for data loading, models or training
    assert GRAPH["sampling"] <= {"atomic"}


def test_nothing_imports_the_commands():
    # commands/ is argument parsing and printing over library functions; recipes and the study call the library
    importers = sorted(src for src, dst in GRAPH.items() if "commands" in dst)
    assert importers == []


def test_lower_layers_do_not_import_upper_ones():
    upper = {"training", "evaluation", "experiments", "commands", "recipe"}
    for low in ("config", "data", "sampling", "models", "nemo", "oomptimizer", "corpora", "paths", "atomic"):
        assert not GRAPH.get(low, set()) & upper, (low, GRAPH.get(low))
