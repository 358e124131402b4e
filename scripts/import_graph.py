"""Which of speech_ed's top-level packages (and modules) import which: the layering, read from the import lines.

    .venv/bin/python scripts/import_graph.py [--root DIR]

prints one line per importer, ``training -> atomic, config, data, ...``. Static (``ast``): imports inside functions
count too, so an import done lazily to break a cycle still shows as a dependency (``cli`` loads the commands by
name through ``importlib``, which is not shown). tests/test_layering.py checks the
rules the design depends on (models import nothing of the project, the sampling core only ``atomic``, nothing
imports ``commands``).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def _unit(rel: tuple[str, ...]) -> str:
    """The top-level package (``sampling``) or module (``atomic``) a file under speech_ed/ belongs to."""
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def package_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{importer: {imported, ...}}`` over the top-level units of ``package_dir`` (the ``speech_ed`` folder)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for f in sorted(package_dir.rglob("*.py")):
        rel = f.relative_to(package_dir).parts
        src = _unit(rel)
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "speech_ed":  # from speech_ed import x
                names = [f"speech_ed.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file's package
                base = list(rel[:-1])[: len(rel) - node.level]
                names = [".".join(["speech_ed", *base, *([node.module] if node.module else [])])]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "speech_ed" and len(parts) > 1 and parts[1] != src:
                    edges[src].add(parts[1])
        edges.setdefault(src, set())
    return dict(edges)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="print speech_ed's package-level import graph")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    args = p.parse_args(argv)
    for src, dst in sorted(package_graph(args.root / "speech_ed").items()):
        print(f"{src:14s} -> {', '.join(sorted(dst)) or '(nothing of the project)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
