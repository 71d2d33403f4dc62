"""Many writers for real: DuckLake on a throwaway PostgreSQL, the session's Prefect server, three `prefect
worker` processes on three work pools, and a round whose stages run as flow runs on those workers.
The same round in one process must leave the same rows (primary keys) in its own lake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from store.db import Store

from helpers import stop_processes

RLAIF = str(Path(sys.executable).parent / "rlaif")
PREFECT = str(Path(sys.executable).parent / "prefect")
POOLS = ("sampling", "judging", "training")


def lake_config(round_config, postgres, tmp_path: Path, name: str, workers: bool) -> Path:
    """The round config on its own lake (a PostgreSQL database), written as a file for `rlaif round`."""
    store = {"kind": "ducklake", "catalog": f"postgres:{postgres.create_database(name)}",
             "data_path": str(tmp_path / f"{name}-data"), "artifacts_dir": str(tmp_path / f"{name}-artifacts")}
    config = round_config.model_dump(mode="json") | {"store": store}
    if workers:  # evaluation runs on the training pool: three workers, four stage kinds
        config["workers"] = {"sampling": "sampling", "judging": "judging", "training": "training", "eval": "training"}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_a_round_on_three_prefect_workers_equals_the_same_round_in_one_process(round_config, postgres, tmp_path, rlaif_env):
    env = {**rlaif_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}  # the session's Prefect server
    one, many = (lake_config(round_config, postgres, tmp_path, name, workers) for name, workers in (("one", False), ("many", True)))
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in POOLS}
    processes = []
    try:
        for pool in POOLS:  # one at a time: the server's SQLite refuses pools created at the same moment
            created = subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process"], env=env,
                                     capture_output=True, text=True, timeout=120)
            assert created.returncode == 0, created.stdout + created.stderr
        for pool in POOLS:
            processes.append(subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--type", "process"], env=env,
                                              cwd=tmp_path, stdout=logs[pool], stderr=subprocess.STDOUT))
        for config in (one, many):
            done = subprocess.run([RLAIF, "round", "--config", str(config)], env=env, cwd=tmp_path, capture_output=True,
                                  text=True, timeout=1200)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        stop_processes(processes, logs.values())

    stores = {}
    for config in (one, many):
        with Store("ducklake:" + json.loads(config.read_text())["store"]["catalog"], read_only=True) as store:
            stores[config.stem] = (store.primary_keys(), {s.stage: s for s in store.stage_runs("round-0001")},
                                   store.rounds()[0])
    (keys_one, stages_one, round_one), (keys_many, stages_many, round_many) = stores["one"], stores["many"]
    assert round_one.status == round_many.status == "finished", (round_one.status_reason, round_many.status_reason)
    assert keys_many == keys_one
    assert keys_one["train_metrics"] and keys_one["evals"]  # it trained and evaluated: every stage had work
    # in one process every stage ran in the round's process; with workers each ran on its pool's worker
    assert {s.work_pool for s in stages_one.values()} == {None} and len({s.pid for s in stages_one.values()}) == 1
    assert {stage: s.work_pool for stage, s in stages_many.items()} == {
        "qualify": "judging", "sampling": "sampling", "judging": "judging", "training": "training", "eval": "training"}
    assert len({s.pid for s in stages_many.values()}) == 5  # five flow runs, each its own process
    assert (round_many.judge_id, round_many.candidate_id, round_many.train_run_id) == (
        round_one.judge_id, round_one.candidate_id, round_one.train_run_id) and round_one.train_run_id
