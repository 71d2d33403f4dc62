"""The layout the design asks for, checked on the code itself: data flows one way (flows -> stage
libraries -> store), only flows/ imports Prefect, only store/ imports duckdb, and no two packages
import each other, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["flows", "judges", "constitution", "training", "evals", "sampling", "store", "review", "lm", "prompts",
            "inputs", "stats"]


def imports_of(package: str) -> set[str]:
    """Top-level names every module of `package` imports."""
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
    return found


def test_only_flows_imports_prefect_and_only_store_imports_duckdb():
    assert "prefect" in imports_of("flows") and "duckdb" in imports_of("store")
    for package in PACKAGES:
        names = imports_of(package)
        assert package == "flows" or "prefect" not in names, package
        assert package == "store" or "duckdb" not in names, package


def test_no_stage_library_imports_flows_and_no_packages_form_a_cycle():
    edges = {p: imports_of(p) & set(PACKAGES) - {p} for p in PACKAGES}
    assert all("flows" not in targets for p, targets in edges.items() if p != "flows")

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    cycles = [(a, b) for a in PACKAGES for b in edges[a] if reaches(b, a, {b})]
    assert cycles == [], cycles
    assert edges["stats"] == set() and edges["store"] == set() and edges["inputs"] == set()
