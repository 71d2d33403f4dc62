"""Every benchmark starts as the README runs it (`.venv/bin/python benchmarks/NAME.py`): run as a file,
its folder comes first on sys.path, where benchmarks/store.py and sampling.py would shadow the
packages of the same name. `--help` gets past every import without measuring anything."""

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
