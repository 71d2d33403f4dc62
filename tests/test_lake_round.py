"""Reviews during a round, for real: the round (`rlaif round`) and the review page (`rlaif review
serve`) are two processes sharing a DuckLake (SQLite catalog: many processes on one machine).
Labels are stored while the round writes, with no 503, and status, judge-stats, report and export
answer; a kill -9 of either process loses nothing that was committed; the resumed round's gate
sees every review stored meanwhile."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from store.db import Store
from store.location import StoreLocation

from helpers import free_port, wait_for

RLAIF = str(Path(sys.executable).parent / "rlaif")


def label_next(client: httpx.Client) -> str | None:
    """Label the pair the page shows next ("left"); returns its pair id, or None when nothing is left."""
    page = client.get("/rounds/1")
    assert page.status_code == 200, (page.status_code, page.text[:500])
    found = {name: re.search(rf'name="{name}" value="([^"]*)"', page.text) for name in ("pair_id", "shown_order")}
    if found["pair_id"] is None:
        return None
    assert found["shown_order"] is not None  # the page's form has both fields
    done = client.post("/rounds/1/label", data={"pair_id": found["pair_id"].group(1),
                                                "shown_order": found["shown_order"].group(1), "choice": "left"})
    assert done.status_code == 303, (done.status_code, done.text[:500])  # stored: never 503 on a lake
    return found["pair_id"].group(1)


@pytest.mark.slow
def test_reviews_are_stored_while_a_round_writes_and_kill_9_of_either_process_loses_nothing(round_config, tmp_path,
                                                                                           rlaif_env):
    location = StoreLocation(kind="ducklake", catalog=f"sqlite:{tmp_path / 'lake.sqlite'}", data_path=str(tmp_path / "data"))
    config = round_config.model_dump(mode="json") | {
        "store": location.model_dump() | {"artifacts_dir": str(tmp_path / "artifacts")},
        # training far longer than the test waits (a stored metrics row per step): the round is still
        # writing when the commands below run, and is killed inside training; the agreement gate counts
        # from 100 reviewed pairs, so the reviews below never stop training
        "training": round_config.training.model_dump() | {"epochs": 1000},
        "review": round_config.review.model_dump() | {"min_reviewed": 100},
    }
    config_file = tmp_path / "lake.json"
    config_file.write_text(json.dumps(config))
    # the resumed round trains afresh: with the round's usual 2 epochs (a rerun takes the config it is given)
    resume_file = tmp_path / "lake-resume.json"
    resume_file.write_text(json.dumps(config | {"training": round_config.training.model_dump(mode="json")}))
    env = rlaif_env
    Store(location).close()  # the lake exists, so a reviewer can be added before the first round
    added = subprocess.run([RLAIF, "review", "add-reviewer", "alice", "--config", str(config_file)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    port = free_port()

    def start_page() -> subprocess.Popen:
        return subprocess.Popen([RLAIF, "review", "serve", "--config", str(config_file), "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_round(config: Path = config_file) -> subprocess.Popen:
        return subprocess.Popen([RLAIF, "round", "--config", str(config)], env=env, cwd=tmp_path,
                                stdout=(tmp_path / "round.log").open("a"), stderr=subprocess.STDOUT)

    def keys() -> dict[str, set]:
        with Store(location, read_only=True) as store:
            return {table: set(rows) for table, rows in store.primary_keys().items()}

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          follow_redirects=False, timeout=30)
    page, round_run = start_page(), start_round()
    labelled: list[str] = []
    try:
        wait_for(lambda: "pair_id" in _page(client), 600, "the round's spot-check queue on the review page")

        # one label while the round writes, and the read-only commands, then kill -9 the page, restart
        # it, and label again
        labelled.append(label_next(client))
        for command in (["status"], ["judge-stats"], ["report", "1", "--format", "md"],
                        ["export", str(tmp_path / "during.jsonl"), "--round", "1"]):
            done = subprocess.run([RLAIF, *command, "--config", str(config_file)], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        assert (tmp_path / "during.jsonl").exists()  # the judged round's dataset, exported while it trains
        assert round_run.poll() is None, "the round ended before a review and the commands ran during it"
        page.send_signal(signal.SIGKILL)
        page.wait()
        page = start_page()
        wait_for(lambda: _page(client), 120, "the restarted review page")
        labelled.append(label_next(client))

        # kill -9 the round in the middle of training: what it committed stays
        with Store(location, read_only=True) as reader:  # reads while the round writes
            wait_for(lambda: reader.count_rows()["train_metrics"] >= 5, 600, "the round's first training steps", every_s=1)
        committed = keys()  # read while the round writes
        round_run.send_signal(signal.SIGKILL)
        assert round_run.wait() == -signal.SIGKILL, "the round finished before it could be killed in training"
        after_kill = keys()
        assert all(committed[t] <= after_kill[t] for t in committed)
        assert len(after_kill["reviews"]) == 2

        while (pair := label_next(client)) is not None:  # the rest of the queue, while no round runs
            labelled.append(pair)
        round_run = start_round(resume_file)
        assert round_run.wait(timeout=900) == 0, (tmp_path / "round.log").read_text()[-3000:]
    finally:
        client.close()
        for process in (page, round_run):
            if process.poll() is None:
                process.kill()
                process.wait()

    final = keys()
    assert all(committed[t] <= final[t] for t in committed)
    with Store(location, read_only=True) as store:
        (rnd,) = store.rounds()
        reviews = store.reviews_of_round(rnd.round_id)
        overall = next(a for a in store.agreement(rnd.round_id) if a.scope == "overall")
        queue = store.review_queue(rnd.round_id)
    assert rnd.status == "finished" and rnd.train_run_id, rnd.status_reason
    assert sorted(r.pair_id for r in reviews) == sorted(labelled) and len(labelled) == len(queue)
    assert overall.n == len(labelled)  # the resumed round's gate saw every review stored meanwhile


def _page(client: httpx.Client) -> str:
    """Round 1's review page, or "" while the page (or the round) is not there yet."""
    try:
        found = client.get("/rounds/1")
    except httpx.TransportError:
        return ""
    return found.text if found.status_code == 200 else ""
