"""The prepared GPU check runs on the CPU in the suite (so it cannot rot before a GPU run)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_on_cpu_and_reports_each_check(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[:2] == ["RESULT", "gpu_dpo_vs_trl"] and float(last[2]) > 0
    results = json.loads(out.read_text())
    checks = results["checks"]
    assert results["device"] == "cpu" and results["passed"]
    assert set(checks) == {"dpo_fp32", "dpo_checkpointing", "judge", "eval_sampling", "throughput"}  # bf16: GPU only
    dpo = checks["dpo_fp32"]
    assert abs(dpo["losses"][0] - math.log(2)) < 1e-6 and len(dpo["losses"]) == len(dpo["cpu_fp32_losses"]) == 4
    assert dpo["losses"][-1] < dpo["losses"][0]  # it trained
    assert checks["throughput"]["ours"]["tokens_per_s"] > 0 and checks["throughput"]["trl"]["tokens_per_s"] > 0
    assert float(last[2]) == pytest.approx(checks["throughput"]["ours_vs_trl"], abs=0.01)
