"""`rlaif collect` in real processes: replies from a file, from an OpenAI-compatible endpoint on
127.0.0.1 and from the policy, judged and stored, nothing twice; bad files refused by row; the
collect deployment served and run once under a local Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from store.db import Store

from helpers import free_port, healthy, stop_processes, wait_for
from openai_stub_server import StubPolicyServer

RLAIF = str(Path(sys.executable).parent / "rlaif")

ROWS = [
    {"prompt": "My parcel LS-100 never arrived.", "responses": ["I'm sorry: I will check order LS-100 now.", "ok"],
     "tags": ["shipping"], "id": "ticket-1"},
    {"prompt": "How do I reset my password?", "responses": [
        {"text": "Use 'Forgot password' on the sign-in page.", "id": "r1", "model": "prod-v3"},
        {"text": "Send me your current password and I will do it.", "id": "r2", "model": "prod-v4"},
        {"text": "Passwords are hard.", "id": "r3", "model": "prod-v4"}], "metadata": {"experiment": "ab-7"}},
]


def collect_config(tmp_path: Path, round_config, **collect) -> Path:
    data = round_config.model_dump(mode="json", exclude_none=True)
    data["judge"] = {**data["judge"], "qualify": False}  # the tests are about collecting; qualification has its own
    data["collect"] = collect
    path = tmp_path / "collect.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rlaif(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([RLAIF, *args], capture_output=True, text=True, timeout=600, env=env)


def test_a_file_is_collected_once_judged_in_both_orders_and_a_second_run_stores_nothing(tmp_path, round_config, rlaif_env):
    source = tmp_path / "replies.parquet"
    columns = {"tags": None, "id": None, "metadata": None}  # every column in every row (Arrow infers from the first)
    pq.write_table(pa.Table.from_pylist([{**columns, **r, "responses": [x if isinstance(x, dict) else {"text": x}
                                                                         for x in r["responses"]]} for r in ROWS]), source)
    config = collect_config(tmp_path, round_config)
    db = str(tmp_path / "rlaif.duckdb")
    first = rlaif("collect", "--config", str(config), "--file", str(source), "--db", db, env=rlaif_env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "collection 1" in first.stdout
    with Store(db, read_only=True) as store:
        (rnd,) = store.rounds()
        counts = store.count_rows()
        completions = store.completions(rnd.round_id, "train")
        pairs = store.pairs(rnd.round_id, "train")
        verdicts = store.verdicts_of_round(rnd.round_id)
    assert rnd.kind == "collect" and rnd.status == "finished" and rnd.train_run_id is None and rnd.candidate_id is None
    assert sorted(c.text for c in completions) == sorted(x if isinstance(x, str) else x["text"] for r in ROWS for x in r["responses"])
    by_text = {c.text: c for c in completions}
    assert by_text["Passwords are hard."].model_id == "prod-v4"
    assert by_text["Passwords are hard."].sampling_json["metadata"] == {"experiment": "ab-7"}
    assert by_text["ok"].model_id == "file:replies.parquet" and by_text["ok"].sampling_json["row_id"] == "ticket-1"
    assert len(pairs) == 1 + 3  # a pair, and every two of a group of three
    ((_, judged),) = verdicts.items()
    assert len(judged) == len(pairs) and all(v.status == "ok" for v in judged)  # judged in both orders: a combined verdict each
    assert counts["judgments"] == 2 * len(pairs)

    again = rlaif("collect", "--config", str(config), "--file", str(source), "--db", db, env=rlaif_env)
    assert again.returncode == 0, again.stderr[-3000:]
    with Store(db, read_only=True) as store:
        assert store.count_rows() == counts and len(store.rounds()) == 1

    # a training round after it gets the next number and neither resumes nor mixes in the collection
    from training.data import earlier_preferences
    with Store(db, read_only=True) as store:
        assert earlier_preferences(store, 2, 5) == []


@pytest.mark.parametrize("bad, message", [
    ('{"prompt": "hi", "responses": ["one"]}', "row 2: responses: List should have at least 2 items"),
    ('{"prompt": "hi", "responses": ["one", "two"], "colour": "red"}', "row 2: colour: Extra inputs are not permitted"),
    ('{"prompt": "hi", "responses": ', "row 2: not valid JSON"),
])
def test_a_malformed_file_exits_2_naming_the_row_and_writes_nothing(tmp_path, round_config, bad, message):
    source = tmp_path / "replies.jsonl"
    source.write_text(json.dumps(ROWS[0]) + "\n" + bad + "\n")
    db = tmp_path / "rlaif.duckdb"
    done = rlaif("collect", "--config", str(collect_config(tmp_path, round_config)), "--file", str(source), "--db", str(db))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not db.exists()


def test_an_endpoint_is_sampled_n_per_prompt_with_retries_and_the_same_night_twice_stores_nothing(tmp_path, round_config, rlaif_env):
    with StubPolicyServer(honours_n=False) as server:  # one choice per request: the sampler asks again for the rest
        config = collect_config(tmp_path, round_config, source="openai",
                                openai={"base_url": server.base_url, "model": "prod-model", "api_key_env": None,
                                        "max_retries": 2})
        db = str(tmp_path / "rlaif.duckdb")
        first = rlaif("collect", "--config", str(config), "--night", "2026-12-04", "--db", db, "--set", "sampler.n=3", env=rlaif_env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        sent = server.requests
        again = rlaif("collect", "--config", str(config), "--night", "2026-12-04", "--db", db, "--set", "sampler.n=3", env=rlaif_env)
        assert again.returncode == 0 and server.requests == sent, again.stderr[-3000:]
    with Store(db, read_only=True) as store:
        (rnd,) = store.rounds()
        completions = store.completions(rnd.round_id, "train")
        pairs = store.pairs(rnd.round_id, "train")
    prompts = round_config.prompts.train_per_round
    assert rnd.round_id.startswith("collect-2026-12-04-openai-")
    assert len(completions) == 3 * prompts and {c.model_id for c in completions} == {"openai:prod-model"}
    assert sent == 3 * prompts  # n=3 asked as n=3; the server gave one choice, so two more requests each
    assert {c.sample_index for c in completions} == {0, 1, 2} and all(c.token_ids for c in completions)
    assert len(pairs) >= 3 * prompts  # every two of three (and each prompt's best vs worst)


def test_the_policy_is_collected_for_a_night_and_another_night_is_a_new_collection(tmp_path, round_config, rlaif_env):
    config = collect_config(tmp_path, round_config)  # source: policy (the default)
    db = str(tmp_path / "rlaif.duckdb")
    for night in ("2026-12-04", "2026-12-05", "2026-12-05"):
        done = rlaif("collect", "--config", str(config), "--night", night, "--db", db, env=rlaif_env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with Store(db, read_only=True) as store:
        rounds = store.rounds()
        assert [r.round_id for r in rounds] == ["collect-2026-12-04-policy", "collect-2026-12-05-policy"]
        assert all(len(store.completions(r.round_id, "train")) == 2 * round_config.prompts.train_per_round for r in rounds)
        assert all(r.status == "finished" and r.judge_id for r in rounds)


def test_the_collect_deployment_is_served_and_runs_once_under_a_local_prefect_server(tmp_path, round_config):
    source = tmp_path / "replies.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = collect_config(tmp_path, round_config, source="file", file=str(source))
    db = tmp_path / "rlaif.duckdb"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
           "PREFECT_LOGGING_TO_API_ENABLED": "false"}
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("server", "serve")}
    server = subprocess.Popen([RLAIF, "server", "--port", str(port)], env=env, stdout=logs["server"], stderr=subprocess.STDOUT)
    serve = None
    try:
        wait_for(lambda: healthy(api), 180, "the Prefect server")
        serve = subprocess.Popen([RLAIF, "serve", "--collect", "--config", str(config), "--db", str(db), "--cron", "0 4 * * *"],
                                 env=env, cwd=tmp_path, stdout=logs["serve"], stderr=subprocess.STDOUT)
        from prefect import get_client
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):  # this server, not the session's test harness
            def deployment():
                with get_client(sync_client=True) as client:
                    try:
                        return client.read_deployment_by_name("rlaif-collect/nightly")
                    except Exception:  # not registered yet
                        return None

            found = wait_for(deployment, 120, "the collect deployment")
            assert found.schedules[0].schedule.cron == "0 4 * * *"
            run = run_deployment("rlaif-collect/nightly", timeout=0)  # triggered by hand; the served runner executes it

            def completed():
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(run.id).state
                assert state is None or not state.is_final() or state.is_completed(), state
                return state if state is not None and state.is_completed() else None

            wait_for(completed, 300, "the collection run to complete")
    finally:
        stop_processes((serve, server), logs.values())
    with Store(db, read_only=True) as store:
        (rnd,) = store.rounds()
        assert rnd.kind == "collect" and rnd.status == "finished" and len(store.pairs(rnd.round_id, "train")) == 4
