"""The store, both kinds (a DuckDB file; DuckLake on SQLite and on PostgreSQL): versioned schema,
idempotent Arrow appends, replace, lineage; the file's single-writer locking; concurrent writers on a lake."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from store.db import Store, StoreError
from store.rows import ModelRow, PromptRow


def prompt_rows(n: int) -> list[PromptRow]:
    return [PromptRow(prompt_id=f"p{i}", text=f"question {i}", source="t", tags=["billing"], split="train") for i in range(n)]


def test_migrations_apply_once_and_are_versioned(store_location):
    db = store_location
    with Store(db) as store:
        assert store.schema_version() == 7
        assert {"rounds", "models", "prompts", "completions", "pairs", "judgments", "verdicts", "review_queue", "reviews",
                "reviewers", "review_sessions", "agreement", "train_runs", "train_metrics", "evals", "stage_runs"} <= set(store.count_rows())
    with Store(db) as store:  # reopening does not re-run the migration (it would fail: tables exist)
        assert store.schema_version() == 7


def test_append_is_idempotent_and_survives_reopen(store_location):
    db = store_location
    with Store(db) as store:
        assert store.append(prompt_rows(1000)) == 1000
        assert store.append(prompt_rows(1000)) == 0        # same ids: nothing inserted twice
        assert store.append(prompt_rows(1200)) == 200      # only the new ones
    with Store(db, read_only=True) as store:
        assert store.count_rows()["prompts"] == 1200
        assert store.by_ids(PromptRow, ["p7"])["p7"].tags == ["billing"]


def test_model_lineage_and_current_policy(store_location):
    with Store(store_location) as store:
        store.append([ModelRow(model_id="base", parent_id=None, kind="base", path="b", created_round=0, promoted=True)])
        store.append([ModelRow(model_id="r1", parent_id="base", kind="adapter", path="a1", created_round=1, promoted=True)])
        store.append([ModelRow(model_id="r2", parent_id="r1", kind="adapter", path="a2", created_round=2, promoted=False)])
        assert store.current_policy().model_id == "r1"
        assert [m.model_id for m in store.model_chain("r2")] == ["base", "r1", "r2"]
        store.set_promotion("r2", True, "won")
        assert store.current_policy().model_id == "r2"


def test_second_process_gets_a_clear_error(tmp_path):
    db = tmp_path / "r.duckdb"
    Store(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from store.db import Store
            s = Store({str(db)!r})
            s.note("round 3: judging")
            print("ready", flush=True)
            sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError) as info:  # who holds it, and doing what
            Store(db, read_only=True)
        assert f"in use by PID {holder.pid} (-c: round 3: judging, since" in str(info.value)
        with pytest.raises(StoreError, match=f"in use by PID {holder.pid}"):
            Store(db)
    finally:
        holder.communicate("\n", timeout=30)
    # a holder killed with SIGKILL leaves its note behind: a stale note is not believed
    stale = db.with_name(db.name + ".holder.json")
    stale.write_text('{"pid": %d, "command": "rlaif round", "since": "x", "activity": "sampling"}' % holder.pid)
    Store(db).close()  # the file is free: it opens, and its own note replaced the stale one
    assert not stale.exists()


class Suspended(Exception):
    """Stands in for Prefect's Pause (the store does not import prefect)."""


def test_a_released_file_stays_free_when_the_block_ends_the_process_and_reopens_otherwise(tmp_path):
    db = tmp_path / "r.duckdb"
    opens_elsewhere = [sys.executable, "-c", f"from store.db import Store; Store({str(db)!r}, read_only=True).close()"]
    store = Store(db)
    with pytest.raises(RuntimeError), store.released(stay_closed_on=(Suspended,)):
        raise RuntimeError("a stage failed")
    assert store.count_rows()["prompts"] == 0  # reopened: the round can still record its failure
    assert subprocess.run(opens_elsewhere, capture_output=True).returncode != 0  # and holds the file again
    with pytest.raises(Suspended), store.released(stay_closed_on=(Suspended,)):
        raise Suspended
    done = subprocess.run(opens_elsewhere, capture_output=True, text=True)  # a suspended run has let go
    assert done.returncode == 0, done.stderr
    store.close()  # the store's own exit closes it again, harmlessly


def test_read_only_open_of_missing_db_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no such database"):
        Store(tmp_path / "missing.duckdb", read_only=True)
    assert not (tmp_path / "missing.duckdb").exists()


def test_replace_swaps_rows_of_the_same_key(store_location):
    from store.rows import VerdictRow

    def verdict(winner: str) -> VerdictRow:
        return VerdictRow(pair_id="p", judge_id="j", constitution_hash="c", status="ok", winner=winner, consistent=True,
                          confidence=1.0, score=1.0, votes_json={}, rationale="", judgment_ab="x", judgment_ba="y")

    with Store(store_location) as store:
        store.append([verdict("a")])
        assert store.append([verdict("b")]) == 0 and store.verdicts(["p"], "j", "c")["p"].winner == "a"
        store.replace([verdict("b")])
        assert store.count_rows()["verdicts"] == 1 and store.verdicts(["p"], "j", "c")["p"].winner == "b"


WRITER = """
import sys, time
from pathlib import Path
from store.db import Store
from store.location import StoreLocation
from store.rows import PromptRow
location, writer, go = StoreLocation.model_validate_json(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
with Store(location) as store:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    for batch in range(6):  # every writer writes the same keys, in a different order
        ids = range(batch * 10, batch * 10 + 30)
        rows = [PromptRow(prompt_id=f"p{i}", text=f"q{i}", source="t", tags=[], split="train") for i in ids]
        store.append(rows[writer:] + rows[:writer])
"""


@pytest.mark.parametrize("kind", ["ducklake-sqlite", "ducklake-postgres"])
def test_concurrent_appends_of_the_same_keys_from_real_processes_never_duplicate(kind, request, tmp_path):
    """Four processes append overlapping batches at the same moment: DuckLake alone would merge the
    inserts (it has no keys); the store's write row makes them conflict, and the retries add each key once."""
    location = _location(kind, request, tmp_path)
    Store(location).close()  # the schema exists before the race (creating it concurrently is tested below)
    go = tmp_path / "go"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, location.model_dump_json(), str(w), str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(4)]
    for w in writers:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
    go.touch()
    for w in writers:
        _, errors = w.communicate(timeout=300)
        assert w.returncode == 0, errors[-3000:]
    with Store(location, read_only=True) as store:
        keys = store.primary_keys()["prompts"]
    assert len(keys) == len(set(keys)) == 80  # p0..p79, each once


@pytest.mark.parametrize("kind", ["ducklake-sqlite", "ducklake-postgres"])
def test_processes_creating_a_new_lake_at_once_make_one_schema(kind, request, tmp_path):
    location = _location(kind, request, tmp_path)
    code = ("import sys; from store.db import Store; from store.location import StoreLocation; "
            "s = Store(StoreLocation.model_validate_json(sys.argv[1])); print(s.schema_version()); s.close()")
    openers = [subprocess.Popen([sys.executable, "-c", code, location.model_dump_json()], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in openers:
        out, errors = p.communicate(timeout=300)
        # the last line: DuckDB may draw a progress bar on stdout when a catalog query is slow
        assert p.returncode == 0 and out.strip().splitlines()[-1] == "7", errors[-3000:]
    with Store(location, read_only=True) as store:
        assert sorted(store.primary_keys()) == sorted(store.count_rows())  # every table once, none twice
        assert store._query("SELECT count(*) FROM schema_migrations")[1][0][0] == 7


def _location(kind: str, request, tmp_path):
    from store.location import StoreLocation

    if kind == "ducklake-sqlite":
        return StoreLocation(kind="ducklake", catalog=f"sqlite:{tmp_path / 'lake.sqlite'}", data_path=str(tmp_path / "data"))
    cluster = request.getfixturevalue("postgres")
    return StoreLocation(kind="ducklake", catalog=f"postgres:{cluster.create_database(tmp_path.name.lower()[:40])}",
                         data_path=str(tmp_path / "data"))


def test_a_lake_location_must_name_its_catalog():
    from pydantic import ValidationError

    from store.location import StoreLocation, parse_location

    with pytest.raises(ValidationError, match="store.catalog"):
        StoreLocation(kind="ducklake", catalog="mysql:x")
    with pytest.raises(ValidationError, match="belong to kind: ducklake"):
        StoreLocation(path="r.duckdb", catalog="sqlite:x")
    assert parse_location("ducklake:postgres:dbname=x password=secret").describe() == "ducklake:postgres:dbname=x"
    assert parse_location("runs/r.duckdb").file.name == "r.duckdb"


def test_a_read_only_open_of_a_missing_lake_is_an_error(tmp_path):
    from store.location import StoreLocation

    with pytest.raises(StoreError, match="no such lake catalog"):
        Store(StoreLocation(kind="ducklake", catalog=f"sqlite:{tmp_path / 'none.sqlite'}"), read_only=True)


def test_a_new_duckdb_file_killed_right_after_a_commit_reopens_with_the_row(tmp_path):
    """DuckDB 1.5 cannot replay a column default's ALTER from the write-ahead log: the migrations are
    checkpointed into the file, so a process killed before any checkpoint of its own leaves a file that
    opens, holding what it committed."""
    db = tmp_path / "r.duckdb"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from store.db import Store
        from store.rows import PromptRow
        store = Store({str(db)!r})
        store.append([PromptRow(prompt_id="p", text="t", source="s", tags=[], split="train")])
        os.kill(os.getpid(), signal.SIGKILL)
    """)])
    assert killed.returncode == -9 and db.with_name(db.name + ".wal").exists()  # the row is only in the log
    with Store(db, read_only=True) as store:
        assert store.count_rows()["prompts"] == 1
