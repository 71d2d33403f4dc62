"""The store while a round writes: appends/s and the review page's latency, DuckDB file vs DuckLake.

For each kind (a DuckDB file; DuckLake with a SQLite catalog; DuckLake with a PostgreSQL catalog,
a throwaway cluster started here), one after another:

1. appends/s of one writer alone: batches of 16 judgment rows (a judging batch of a round);
2. the same writer in another process, appending a batch every 0.5 s (a busy round: a CPU round
   writes a judging batch every few seconds) and then without pause, while `rlaif review serve`
   (a third process) answers a reviewer that loads the page, labels the shown pair and undoes it,
   again and again: each request's latency and status. A DuckDB file is held by its writer, so the
   page answers 503 ("Database busy") the whole time; a lake answers.

    .venv/bin/python benchmarks/store_writers.py [--seconds 20] [--out docs/results/store.json]

The last line is `RESULT ducklake_review_p95_ms <p95 of answered requests, PostgreSQL catalog, the
writer pausing 0.5 s>`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "tests"))  # pg_cluster and helpers: the throwaway PostgreSQL and the seeded pairs of the tests

import httpx  # noqa: E402

from store.db import Store  # noqa: E402
from store.location import StoreLocation  # noqa: E402
from store.rows import JudgmentRow, ReviewQueueRow, RoundRow  # noqa: E402

RLAIF = str(Path(sys.executable).parent / "rlaif")
BATCH = 16
WRITER_PAUSES = (0.5, 0.0)  # a busy round, then a writer flat out

def judgments(prefix: str) -> list[JudgmentRow]:
    """One judging batch: 16 judgments with fresh ids and round-sized texts."""
    return [JudgmentRow(judgment_id=f"{prefix}-{i}", pair_id=f"pair-{i}", judge_id="bench-judge", constitution_hash="c",
                        prompt_version="v", shown_order="ab", parse_status="ok", winner="a", score=0.4,
                        votes_json={"honest": "a", "courteous": "tie"}, rationale="a is more honest " * 8,
                        raw_response="{}" * 50, latency_s=0.1) for i in range(BATCH)]


def seed(location: StoreLocation, queued: int = 20) -> str:
    """A round with `queued` spot-checks and a reviewer; returns the reviewer's token."""
    from review.session import add_reviewer

    from helpers import seed_pairs

    with Store(location) as store:
        pairs = seed_pairs(store, [(f"Question {i}?", f"Answer A {i}.", f"Answer B {i}.") for i in range(queued)], "r")
        store.append([RoundRow(round_id="r", round_index=1, status="running", policy_id="m", constitution_hash="c",
                               seed=0, config_json={})])
        store.append([ReviewQueueRow(pair_id=p.pair_id, round_id="r", reasons=["random"]) for p in pairs])
        return add_reviewer(store, "alice")


def write_until(location: StoreLocation, stop: Path, pause_s: float) -> None:
    """The writer process: append a judging batch every `pause_s` until `stop` exists; print appends/s."""
    with Store(location) as store:
        print("ready", flush=True)
        n, started = 0, time.perf_counter()
        while not stop.exists():
            store.append(judgments(f"w{n}"))
            n += 1
            time.sleep(pause_s)
        print(n / (time.perf_counter() - started), flush=True)


def appends_per_s(location: StoreLocation, seconds: float) -> float:
    with Store(location) as store:
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            store.append(judgments(f"solo{n}"))
            n += 1
        return n / (time.perf_counter() - started)


def review_under_writes(location: StoreLocation, token: str, seconds: float, pause_s: float, work: Path) -> dict:
    """Latency of load-label-undo cycles on `rlaif review serve` while another process appends."""
    port = _free_port()
    db = location.describe() if location.kind == "ducklake" else str(location.file)
    page = subprocess.Popen([RLAIF, "review", "serve", "--db", db, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    stop = work / f"stop-{port}"
    writer = None
    try:
        deadline = time.monotonic() + 120
        while not _answers(client):
            if time.monotonic() > deadline or page.poll() is not None:
                raise RuntimeError(f"rlaif review serve --db {db} did not start")
            time.sleep(0.5)
        writer = subprocess.Popen([sys.executable, __file__, "--writer", location.model_dump_json(), str(stop), str(pause_s)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None  # stdout=PIPE
        assert writer.stdout.readline().strip() == "ready"
        latencies, statuses = [], []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            t = time.perf_counter()
            shown = client.get("/rounds/1")
            latencies.append(time.perf_counter() - t)
            statuses.append(shown.status_code)
            fields = {n: re.search(rf'name="{n}" value="([^"]*)"', shown.text) for n in ("pair_id", "shown_order")}
            if shown.status_code != 200 or fields["pair_id"] is None:
                continue
            assert fields["shown_order"] is not None  # the page's form has both fields
            for path, data in (("/rounds/1/label", {"pair_id": fields["pair_id"].group(1),
                                                    "shown_order": fields["shown_order"].group(1), "choice": "left"}),
                               ("/rounds/1/undo", {})):
                t = time.perf_counter()
                statuses.append(client.post(path, data=data).status_code)
                latencies.append(time.perf_counter() - t)
        stop.touch()
        writer_rate = float(writer.stdout.readline())
        writer.wait(timeout=120)
    finally:
        client.close()
        for process in (writer, page):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    answered = [lat for lat, status in zip(latencies, statuses) if status in (200, 303)]
    return {"requests": len(statuses), "answered": len(answered), "busy_503": statuses.count(503),
            "p50_ms": round(1000 * statistics.median(answered), 1) if answered else None,
            "p95_ms": round(1000 * _p95(answered), 1) if answered else None,
            "p95_all_ms": round(1000 * _p95(latencies), 1) if latencies else None,
            "writer_appends_per_s": round(writer_rate, 1)}


def _p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def _answers(client: httpx.Client) -> bool:
    try:
        client.get("/login")
        return True
    except httpx.TransportError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="per measurement")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--writer", nargs=3, metavar=("LOCATION_JSON", "STOP_FILE", "PAUSE_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        write_until(StoreLocation.model_validate_json(args.writer[0]), Path(args.writer[1]), float(args.writer[2]))
        return
    from pg_cluster import postgres_cluster

    work = Path(tempfile.mkdtemp(prefix="rlaif-store-bench-"))
    results: dict[str, dict[str, Any]] = {}
    with postgres_cluster() as cluster:
        kinds = {
            "duckdb": StoreLocation(path=str(work / "bench.duckdb")),
            "ducklake-sqlite": StoreLocation(kind="ducklake", catalog=f"sqlite:{work / 'lake.sqlite'}",
                                             data_path=str(work / "sqlite-data")),
            "ducklake-postgres": StoreLocation(kind="ducklake", catalog=f"postgres:{cluster.create_database('bench')}",
                                               data_path=str(work / "pg-data")),
        }
        for kind, location in kinds.items():
            token = seed(location)
            alone = appends_per_s(location, args.seconds)
            results[kind] = {"appends_per_s_alone": round(alone, 1), "rows_per_append": BATCH}
            print(f"{kind:18} appends/s alone {alone:7.1f}", flush=True)
            for pause in WRITER_PAUSES:
                under = review_under_writes(location, token, args.seconds, pause, work)
                results[kind][f"writer_pause_{pause}s"] = under
                print(f"{kind:18} writer pausing {pause} s: {under['writer_appends_per_s']:5.1f} appends/s; page answered "
                      f"{under['answered']}/{under['requests']} (503: {under['busy_503']}), p50 {under['p50_ms']} ms, "
                      f"p95 {under['p95_ms']} ms", flush=True)
    command = "python benchmarks/store_writers.py " + " ".join(sys.argv[1:])
    if args.out:
        args.out.write_text(json.dumps({"command": command, "seconds": args.seconds, "results": results}, indent=1) + "\n")
    print(f"RESULT ducklake_review_p95_ms {results['ducklake-postgres'][f'writer_pause_{WRITER_PAUSES[0]}s']['p95_ms']}")


if __name__ == "__main__":
    main()
