"""What share of a round is orchestration (Prefect + DuckDB) rather than model work?

Runs one demo-sized round (SmolLM2, transformers) as the Prefect flow, after a warm-up flow has
started Prefect's temporary server (its ~30 s start is not part of a round on a deployed setup).
Model work = the time inside the round's task functions minus the DuckDB time inside them; DuckDB
time = every Store call, timed around the call; everything else in the flow's wall time is
orchestration (Prefect's engine and API calls, and DuckDB).

    .venv/bin/python benchmarks/orchestration.py [--train-per-round 16] [--heldout 8]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import tempfile
import time
from importlib import resources
from pathlib import Path

import yaml

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import Task, flow

import flows.round as round_module
import flows.stages as stages_module
from flows.config import checked_config, load_config
from inputs.files import load_yaml
from store.db import Store

spent = {"store": 0.0, "model": 0.0}
depth = {"store": 0}


def time_store_calls() -> None:
    """Wrap every Store method so its wall time adds to spent["store"] (outermost call only)."""
    for name, method in inspect.getmembers(Store, inspect.isfunction):
        if name.startswith("__") and name not in ("__init__",):
            continue

        def timed(*args, _method=method, **kwargs):
            depth["store"] += 1
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                depth["store"] -= 1
                if depth["store"] == 0:
                    spent["store"] += time.perf_counter() - started
        setattr(Store, name, functools.wraps(method)(timed))


def time_tasks() -> None:
    """Wrap the function inside every task of the round flow: its wall time minus the Store calls it
    made adds to spent["model"]."""
    for task in (v for module in (round_module, stages_module) for v in vars(module).values() if isinstance(v, Task)):
        def timed(*args, _fn=task.fn, **kwargs):
            started, store_before = time.perf_counter(), spent["store"]
            try:
                return _fn(*args, **kwargs)
            finally:
                spent["model"] += time.perf_counter() - started - (spent["store"] - store_before)
        task.fn = functools.wraps(task.fn)(timed)


@flow
def warm_up() -> None:
    """Starts Prefect's temporary server before the measured round."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-round", type=int, default=16)
    parser.add_argument("--heldout", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlaif-orchestration-"))
    config = load_yaml((resources.files("flows") / "demo.yaml").read_text())
    config["prompts"].update({"train_per_round": args.train_per_round, "heldout": args.heldout})
    config["sampler"]["backend"] = "transformers"
    config["store"] = {"path": str(work / "bench.duckdb")}
    (work / "bench.yaml").write_text(yaml.safe_dump(config))
    round_config = checked_config(load_config(work / "bench.yaml"))

    warm_up()
    time_store_calls()
    time_tasks()
    started = time.perf_counter()
    summary = round_module.rlaif_round(config=round_config)
    total = time.perf_counter() - started
    store_s, model_s = spent["store"], spent["model"]
    orchestration = total - model_s
    print(f"round {summary.round_index}: {summary.pairs_judged} pairs judged, trained: {summary.train.trained}")
    print(f"round wall time      {total:8.1f} s")
    print(f"model work in tasks  {model_s:8.1f} s")
    print(f"DuckDB (all calls)   {store_s:8.1f} s  ({store_s / total:.1%})")
    print(f"Prefect and the rest {orchestration - store_s:8.1f} s  ({(orchestration - store_s) / total:.1%})")
    print(f"RESULT orchestration_share_of_round {orchestration / total:.3f}")


if __name__ == "__main__":
    main()
