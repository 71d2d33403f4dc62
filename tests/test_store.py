"""The DuckDB store: versioned migrations, idempotent Arrow appends, single-writer locking."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from store.db import Store, StoreError
from store.rows import ModelRow, PromptRow


def prompt_rows(n: int) -> list[PromptRow]:
    return [PromptRow(prompt_id=f"p{i}", text=f"question {i}", source="t", tags=["billing"], split="train") for i in range(n)]


def test_migrations_apply_once_and_are_versioned(tmp_path):
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        assert store.schema_version() == 5
        assert {"rounds", "models", "prompts", "completions", "pairs", "judgments", "verdicts", "review_queue",
                "reviews", "reviewers", "review_sessions", "agreement", "train_runs", "train_metrics", "evals"} <= set(store.count_rows())
    with Store(db) as store:  # reopening does not re-run the migration (it would fail: tables exist)
        assert store.schema_version() == 5


def test_append_is_idempotent_and_survives_reopen(tmp_path):
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        assert store.append(prompt_rows(1000)) == 1000
        assert store.append(prompt_rows(1000)) == 0        # same ids: nothing inserted twice
        assert store.append(prompt_rows(1200)) == 200      # only the new ones
    with Store(db, read_only=True) as store:
        assert store.count_rows()["prompts"] == 1200
        assert store.by_ids(PromptRow, ["p7"])["p7"].tags == ["billing"]


def test_model_lineage_and_current_policy(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
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


def test_read_only_open_of_missing_db_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no such database"):
        Store(tmp_path / "missing.duckdb", read_only=True)
    assert not (tmp_path / "missing.duckdb").exists()
