"""The packages' import arrows point one way: core ← features ← pipeline ← models ← commands ← cli.py.
core imports nothing of ours; features nothing of pipeline or models; pipeline nothing of models;
no library package imports the command line (commands/, cli.py), and commands/ does not import
cli.py. Lazy imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("core", "features", "pipeline", "models", "commands", "cli")
CLI = {"commands", "cli"}
FORBIDDEN = {"core": {"features", "pipeline", "models"} | CLI,
             "features": {"pipeline", "models"} | CLI,
             "pipeline": {"models"} | CLI,
             "models": CLI,
             "commands": {"cli"}}


def imported_packages(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out & set(OURS)


def violations() -> list[str]:
    bad = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for name in sorted(imported_packages(path.read_text(encoding="utf-8")) & banned):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    return bad


def test_imports_point_one_way():
    assert violations() == []


def test_the_check_sees_a_forbidden_arrow():
    assert imported_packages("def f():\n    from pipeline.store import StageReader\n") == {"pipeline"}
    assert imported_packages("import models.trainer as t\nfrom . import x\n") == {"models"}
