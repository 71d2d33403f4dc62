"""Distributed training for real: `accelerate launch` with 2 CPU processes (DDP over gloo) takes the
same steps as one process with the whole batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def run(command: list[str], tmp_path: Path, world: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent.parent)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["world"] == world
    return written["metrics"]


def test_two_process_ddp_matches_one_process_with_the_whole_batch(tiny_model_dir, tmp_path):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    single = run([sys.executable, str(SCRIPT), str(tiny_model_dir), "metrics.json"], single_dir, world=1)
    # `accelerate launch --cpu` starts a single process unless MPI is set up; `--multi_gpu` starts
    # torchrun's processes, and without a GPU the trainer's Accelerator(cpu=True) joins them over gloo.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp = run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(port), str(SCRIPT), str(tiny_model_dir), "metrics.json"],
              ddp_dir, world=2)
    assert len(single) == len(ddp) == 6
    for one, two in zip(single, ddp):
        for key in ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "grad_norm"):
            assert two[key] == pytest.approx(one[key], abs=1e-4), (one["step"], key)
    assert single[-1]["loss"] != pytest.approx(single[0]["loss"], abs=1e-3)  # it trained, so the match means something
