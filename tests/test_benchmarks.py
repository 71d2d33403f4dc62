"""Every benchmark starts as the docs run it (`.venv/bin/python benchmarks/NAME.py`): run as a file,
its folder comes first on sys.path, so no benchmark may be named like a package of the project (it
would shadow it). `--help` gets past every import without measuring anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "all.py")  # all.py runs the others


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_imports_run_as_a_file(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=300, cwd=BENCHMARKS.parent)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_no_benchmark_shadows_a_package():
    packages = {p.name for p in BENCHMARKS.parent.iterdir() if (p / "__init__.py").is_file()}
    assert packages and not {Path(s).stem for s in SCRIPTS} & packages


def test_the_results_page_is_generated_from_the_results_files_and_current():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from results_page import PAGE, render
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert PAGE.read_text() == render(), "docs/results.md is out of date: run .venv/bin/python benchmarks/results_page.py"
