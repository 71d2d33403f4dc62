"""Scheduling for real: `rlaif server` (a local Prefect server), `rlaif serve` (the nightly
deployment with its cron), a triggered run that suspends at the review gate, `rlaif review release`
that resumes it to completion, the scheduled runs of the next 24 hours; then `prefect deploy` of
prefect.yaml's nightly deployment for a process work pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from store.db import Store

from helpers import free_port, healthy, stop_processes, wait_for

RLAIF = str(Path(sys.executable).parent / "rlaif")
REPO = Path(__file__).resolve().parent.parent


def check_nightly(db: Path, env: dict[str, str]) -> None:
    """Against the served deployment: its schedule, a triggered run through the review gate, the next runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments import run_deployment

    def deployment():
        with get_client(sync_client=True) as client:
            try:
                return client.read_deployment_by_name("rlaif-loop/nightly")
            except Exception:  # not registered yet
                return None

    found = wait_for(deployment, 120, "the nightly deployment")
    (schedule,) = found.schedules
    assert schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "Europe/Berlin"

    run = run_deployment("rlaif-loop/nightly", timeout=0)  # triggered by hand; the served runner executes it
    assert isinstance(run, FlowRun)  # called outside an event loop: the run, not a coroutine

    def state_of(name: str):
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
        return state if state is not None and state.name == name else None

    wait_for(lambda: state_of("Suspended"), 300, "the run to suspend at the review gate")
    with Store(db, read_only=True) as store:  # the suspended run's process has let go of the file
        (rnd,) = store.rounds()
        assert rnd.status == "waiting_for_review" and rnd.flow_run_id == str(run.id)
    released = subprocess.run([RLAIF, "review", "release", "1", "--db", str(db)], env=env, capture_output=True,
                              text=True, timeout=120)
    assert released.returncode == 0 and "resumes" in released.stdout, released.stdout + released.stderr
    wait_for(lambda: state_of("Completed"), 300, "the resumed run to complete")
    with Store(db, read_only=True) as store:
        (rnd,) = store.rounds()
        assert rnd.status == "finished" and rnd.train_run_id is not None, rnd.status_reason

    def scheduled():
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])),
                flow_run_filter=FlowRunFilter(state={"type": {"any_": ["SCHEDULED"]}}))
        now = datetime.now(timezone.utc)
        return [r for r in runs if now < r.expected_start_time <= now + timedelta(hours=24)]

    (next_run,) = wait_for(scheduled, 120, "a scheduled run in the next 24 hours")
    berlin = next_run.expected_start_time.astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (3, 0)

    # the same deployment from prefect.yaml, for a process work pool (the README's commands)
    prefect = str(Path(sys.executable).with_name("prefect"))
    for command in ([prefect, "work-pool", "create", "rlaif", "--type", "process"],
                    [prefect, "--no-prompt", "deploy", "--name", "nightly"]):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployed = client.read_deployment_by_name("rlaif-loop/nightly")
    (schedule,) = deployed.schedules
    assert isinstance(schedule.schedule, CronSchedule)
    assert deployed.work_pool_name == "rlaif" and deployed.entrypoint == "flows/loop.py:rlaif_loop"
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "Europe/Berlin"
    assert deployed.parameters == {"config_path": "rlaif.yaml", "rounds": 1}


@pytest.mark.slow
def test_nightly_deployment_runs_suspends_at_the_gate_resumes_and_is_scheduled(round_config, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5", "PREFECT_LOGGING_TO_API_ENABLED": "false",
           "COLUMNS": "200"}
    config = round_config.model_copy(update={"review": round_config.review.model_copy(update={"gate": "wait"})})
    config_file = tmp_path / "nightly.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    db = config.store.file
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("server", "serve")}
    server = subprocess.Popen([RLAIF, "server", "--port", str(port)], env=env, stdout=logs["server"], stderr=subprocess.STDOUT)
    serve = None
    try:
        wait_for(lambda: healthy(api), 180, "the Prefect server")
        serve = subprocess.Popen([RLAIF, "serve", "--config", str(config_file), "--cron", "0 3 * * *",
                                  "--timezone", "Europe/Berlin"], env=env, cwd=tmp_path, stdout=logs["serve"],
                                 stderr=subprocess.STDOUT)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):  # this server, not the session's test harness
            check_nightly(db, env)
    finally:
        stop_processes((serve, server), logs.values())
