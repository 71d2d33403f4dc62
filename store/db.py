"""The DuckDB store: the only module that talks SQL.

One read-write connection per process (DuckDB locks the file against every other process, even
readers), bulk inserts through Arrow, `INSERT OR IGNORE` on deterministic primary keys so reruns add
nothing. The writing process leaves `<db>.holder.json` (PID, command, what it is doing) beside the
file, so a process it locks out can say who holds the file instead of only failing.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from store.rows import (
    AgreementRow,
    CompletionRow,
    EvalRow,
    JudgeQualificationRow,
    ModelRow,
    PairRecord,
    PairRow,
    ReviewerRow,
    ReviewQueueRow,
    ReviewRow,
    ReviewSessionRow,
    RoundRow,
    Row,
    TrainMetricRow,
    VerdictRow,
    utcnow,
)

R = TypeVar("R", bound=Row)


class StoreError(RuntimeError):
    """The database could not be opened or used (message says which file and why)."""


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNN_name.sql` shipped in store/migrations, in order."""
    found = []
    for entry in (resources.files("store") / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


class Store:
    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._activity = ""  # what this process is doing with the file (see note())
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such database (run a round first)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect()
        if not read_only:
            self._migrate()

    @property
    def holder_file(self) -> Path:
        """Who holds the file for writing, and doing what: read by a process that cannot open it."""
        return self.path.with_name(self.path.name + ".holder.json")

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.IOException as exc:
            raise StoreError(self._in_use_message(exc)) from exc
        if not self.read_only:
            self._write_holder()
        return con

    def _write_holder(self) -> None:
        holder = {"pid": os.getpid(), "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:3]),
                  "since": utcnow().isoformat(timespec="seconds"), "activity": self._activity}
        partial = self.holder_file.with_name(self.holder_file.name + ".partial")
        partial.write_text(json.dumps(holder))
        partial.replace(self.holder_file)

    def note(self, activity: str) -> None:
        """Say what this process is doing with the file (shown to anyone it locks out)."""
        self._activity = activity
        if not self.read_only:
            self._write_holder()

    def _in_use_message(self, exc: Exception) -> str:
        try:
            holder = json.loads(self.holder_file.read_text())
            os.kill(holder["pid"], 0)  # still alive? (signal 0 only checks)
        except (OSError, ValueError, KeyError):
            return f"{self.path} is in use by another process or unreadable: {exc}"
        doing = f": {holder['activity']}" if holder.get("activity") else ""
        return (f"{self.path} is in use by PID {holder['pid']} ({holder['command']}{doing}, since {holder['since']} UTC). "
                "DuckDB allows one writing process per file: wait for it to finish or stop it.")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        if not self.read_only:
            self._drop_holder()

    def _drop_holder(self) -> None:
        try:
            if json.loads(self.holder_file.read_text()).get("pid") == os.getpid():
                self.holder_file.unlink()
        except (OSError, ValueError):
            pass

    @contextmanager
    def released(self) -> Iterator[None]:
        """Close the connection for the block (so another process, e.g. a launched trainer, can
        open the file), then reconnect."""
        self.close()
        try:
            yield
        finally:
            self.con = self._connect()

    # ---- schema -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
        )
        applied = {v for (v,) in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, sql in _migrations():
            if version in applied:
                continue
            with self._transaction():
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """All statements in the block, or none."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def schema_version(self) -> int:
        return self.con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0]

    # ---- writes -------------------------------------------------------------------------------
    def append(self, rows: Sequence[Row]) -> int:
        """Insert rows of one table in one Arrow batch; rows whose key exists are skipped.

        Returns the number of rows actually inserted.
        """
        return self._insert(rows, "IGNORE")

    def replace(self, rows: Sequence[Row]) -> int:
        """Insert rows of one table, replacing rows with the same key: only for derived rows (verdicts,
        recomputed from the stored judgments when the qualification gate changes what counts)."""
        return self._insert(rows, "REPLACE")

    def _insert(self, rows: Sequence[Row], on_conflict: str) -> int:
        """One Arrow batch `INSERT OR <on_conflict>`; returns how many rows the table grew by."""
        if not rows:
            return 0
        table = rows[0].table
        if any(r.table != table for r in rows):
            raise ValueError("append() and replace() take rows of a single table")
        self.con.register("_incoming", pa.Table.from_pylist([_to_record(r) for r in rows]))
        try:
            before = self._count(table)
            self.con.execute(f"INSERT OR {on_conflict} INTO {table} BY NAME SELECT * FROM _incoming")
            return self._count(table) - before
        finally:
            self.con.unregister("_incoming")

    def _count(self, table: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    def finish_round(self, round_id: str, status: str, reason: str | None, summary: dict) -> None:
        self.con.execute(
            "UPDATE rounds SET status = ?, status_reason = ?, summary_json = ?, finished_at = ? "
            "WHERE round_id = ?",
            [status, reason, json.dumps(summary), utcnow(), round_id],
        )

    def set_promotion(self, model_id: str, promoted: bool, reason: str) -> None:
        self.con.execute(
            "UPDATE models SET promoted = ?, promotion_reason = ? WHERE model_id = ?",
            [promoted, reason, model_id],
        )

    # ---- generic reads ------------------------------------------------------------------------
    def _select(self, cls: type[R], where: str = "TRUE", params: Sequence[Any] = (), order: str = "") -> list[R]:
        cursor = self.con.execute(
            f"SELECT * FROM {cls.table} WHERE {where} {('ORDER BY ' + order) if order else ''}",
            list(params),
        )
        columns = [d[0] for d in cursor.description]
        return [_from_record(cls, dict(zip(columns, values))) for values in cursor.fetchall()]

    def by_ids(self, cls: type[R], ids: Iterable[str]) -> dict[str, R]:
        """Rows of a single-key table whose key is in `ids`, keyed by id."""
        (key,) = cls.key
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        rows = self._select(cls, f"{key} IN (SELECT unnest(?))", [wanted])
        return {getattr(r, key): r for r in rows}

    def count_rows(self) -> dict[str, int]:
        tables = [
            t for (t,) in self.con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "AND table_name <> 'schema_migrations' ORDER BY table_name"
            ).fetchall()
        ]
        return {t: self._count(t) for t in tables}

    def primary_keys(self) -> dict[str, list[tuple]]:
        """Every table's primary keys, sorted: what two runs of the same rounds must agree on."""
        tables = {cls.table: cls.key for cls in Row.__subclasses__()}
        return {t: sorted(self.con.execute(f"SELECT {', '.join(key)} FROM {t}").fetchall()) for t, key in sorted(tables.items())}

    # ---- rounds and models --------------------------------------------------------------------
    def rounds(self) -> list[RoundRow]:
        return self._select(RoundRow, order="round_index")

    def round_by_index(self, round_index: int) -> RoundRow | None:
        found = self._select(RoundRow, "round_index = ?", [round_index])
        return found[0] if found else None

    def current_policy(self) -> ModelRow | None:
        """The most recently promoted model (a base model counts as promoted at round 0)."""
        found = self._select(ModelRow, "promoted", order="created_round DESC, created_at DESC")
        return found[0] if found else None

    def model_chain(self, model_id: str) -> list[ModelRow]:
        """The model and its ancestors, base first (an adapter applies on top of its parent)."""
        chain: list[ModelRow] = []
        next_id: str | None = model_id
        while next_id is not None:
            found = self.by_ids(ModelRow, [next_id])
            if next_id not in found:
                raise StoreError(f"model {next_id} is not in {self.path}")
            chain.append(found[next_id])
            next_id = found[next_id].parent_id
        return chain[::-1]

    # ---- round data ---------------------------------------------------------------------------
    def completions(self, round_id: str, purpose: str) -> list[CompletionRow]:
        return self._select(CompletionRow, "round_id = ? AND purpose = ?", [round_id, purpose], "completion_id")

    def evals(self, round_id: str) -> list[EvalRow]:
        return self._select(EvalRow, "round_id = ?", [round_id], "candidate_id, baseline_id, metric")

    def pairs(self, round_id: str, purpose: str) -> list[PairRow]:
        return self._select(PairRow, "round_id = ? AND purpose = ?", [round_id, purpose], "pair_id")

    def verdicts(self, pair_ids: Iterable[str], judge_id: str, constitution_hash: str) -> dict[str, VerdictRow]:
        rows = self._select(
            VerdictRow,
            "pair_id IN (SELECT unnest(?)) AND judge_id = ? AND constitution_hash = ?",
            [list(pair_ids), judge_id, constitution_hash],
        )
        return {r.pair_id: r for r in rows}

    def training_candidates(self, round_id: str, judge_id: str, constitution_hash: str) -> list[PairRecord]:
        """The round's training pairs with texts, token ids and (if judged) the judge's verdict.

        Round-robin comparisons (n>2) only rank samples; their max_min selections are the training pairs.
        """
        cursor = self.con.execute(
            """
            SELECT p.pair_id, pr.text AS prompt, pr.tags AS prompt_tags,
                   ca.text AS text_a, cb.text AS text_b, ca.token_ids AS ids_a, cb.token_ids AS ids_b,
                   ca.sum_logprob AS logp_a, cb.sum_logprob AS logp_b,
                   v.status AS verdict_status, v.winner AS judge_winner, coalesce(v.consistent, false) AS consistent,
                   coalesce(v.confidence, 0.0) AS confidence, coalesce(v.rationale, '') AS rationale,
                   coalesce(v.votes_json, '{}') AS votes_json
            FROM pairs p
            LEFT JOIN verdicts v ON v.pair_id = p.pair_id AND v.judge_id = ? AND v.constitution_hash = ?
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            JOIN prompts pr ON pr.prompt_id = p.prompt_id
            WHERE p.round_id = ? AND p.purpose = 'train' AND p.pairing <> 'round_robin'
            ORDER BY p.pair_id
            """,
            [judge_id, constitution_hash, round_id],
        )
        columns = [d[0] for d in cursor.description]
        return [_from_record(PairRecord, dict(zip(columns, values))) for values in cursor.fetchall()]

    def verdicts_of_round(self, round_id: str, purpose: str = "train") -> dict[tuple[str, str], list[VerdictRow]]:
        """Every verdict on the round's pairs, grouped by (judge id, constitution hash)."""
        rows = self._select(
            VerdictRow, "pair_id IN (SELECT pair_id FROM pairs WHERE round_id = ? AND purpose = ?)",
            [round_id, purpose], "judge_id, pair_id")
        grouped: dict[tuple[str, str], list[VerdictRow]] = {}
        for r in rows:
            grouped.setdefault((r.judge_id, r.constitution_hash), []).append(r)
        return grouped

    def qualification(self, judge_id: str, constitution_hash: str, set_hash: str) -> JudgeQualificationRow | None:
        found = self._select(JudgeQualificationRow, "judge_id = ? AND constitution_hash = ? AND set_hash = ?",
                             [judge_id, constitution_hash, set_hash])
        return found[0] if found else None

    def qualifications(self) -> list[JudgeQualificationRow]:
        """Every stored qualification, newest first."""
        return self._select(JudgeQualificationRow, order="created_at DESC")

    def review_queue(self, round_id: str) -> list[ReviewQueueRow]:
        return self._select(ReviewQueueRow, "round_id = ?", [round_id], "pair_id")

    def train_metrics(self, run_id: str) -> list[TrainMetricRow]:
        return self._select(TrainMetricRow, "run_id = ?", [run_id], "step")

    # ---- review ---------------------------------------------------------------------------------
    def reviewer_by_token(self, token_sha256: str) -> ReviewerRow | None:
        """The reviewer whose token this is, unless revoked."""
        found = self._select(ReviewerRow, "token_sha256 = ? AND revoked_at IS NULL", [token_sha256])
        return found[0] if found else None

    def reviewers(self) -> list[ReviewerRow]:
        return self._select(ReviewerRow, order="reviewer_id")

    def review_session(self, session_sha256: str) -> ReviewSessionRow | None:
        """A live session: not expired, and its reviewer not revoked."""
        found = self._select(
            ReviewSessionRow, "session_sha256 = ? AND expires_at > ? AND reviewer_id IN "
            "(SELECT reviewer_id FROM reviewers WHERE revoked_at IS NULL)", [session_sha256, utcnow()])
        return found[0] if found else None

    def end_review_session(self, session_sha256: str) -> None:
        """Logout: the session is gone, so its cookie is worth nothing even if it was copied."""
        self.con.execute("DELETE FROM review_sessions WHERE session_sha256 = ?", [session_sha256])

    def revoke_reviewer(self, reviewer_id: str) -> None:
        """Stop a reviewer's token and end their sessions (their reviews stay)."""
        with self._transaction():
            self.con.execute("UPDATE reviewers SET revoked_at = ? WHERE reviewer_id = ?", [utcnow(), reviewer_id])
            self.con.execute("DELETE FROM review_sessions WHERE reviewer_id = ?", [reviewer_id])

    def reissue_reviewer_token(self, reviewer_id: str, token_sha256: str) -> None:
        """A revoked reviewer gets a new token (the old one stays dead: its hash is replaced)."""
        self.con.execute("UPDATE reviewers SET token_sha256 = ?, revoked_at = NULL WHERE reviewer_id = ?",
                         [token_sha256, reviewer_id])

    def reviews_of_round(self, round_id: str) -> list[ReviewRow]:
        return self._select(ReviewRow, "pair_id IN (SELECT pair_id FROM review_queue WHERE round_id = ?)", [round_id],
                            "created_at, review_id")

    def delete_review(self, review_id: str) -> None:
        """A reviewer's undo: the one row the product ever removes (it was a human's slip, not data)."""
        self.con.execute("DELETE FROM reviews WHERE review_id = ?", [review_id])

    def set_round_status(self, round_id: str, status: str, reason: str | None) -> None:
        self.con.execute("UPDATE rounds SET status = ?, status_reason = ? WHERE round_id = ?", [status, reason, round_id])

    def set_flow_run(self, round_id: str, flow_run_id: str) -> None:
        self.con.execute("UPDATE rounds SET flow_run_id = ? WHERE round_id = ?", [flow_run_id, round_id])

    def release_review(self, round_id: str) -> None:
        self.con.execute("UPDATE rounds SET review_released = true WHERE round_id = ?", [round_id])

    def agreement(self, round_id: str) -> list[AgreementRow]:
        """The latest agreement rows of a round (one computation per judge and constitution)."""
        return self._select(
            AgreementRow,
            "round_id = ? AND computed_at = (SELECT max(computed_at) FROM agreement WHERE round_id = ?)",
            [round_id, round_id], "scope, subject")


def _to_record(row: Row) -> dict[str, Any]:
    record = row.model_dump()
    for name, value in record.items():
        if name.endswith("_json") and value is not None:
            record[name] = json.dumps(value, sort_keys=True)
    return record


def _from_record(cls: type[R], record: dict[str, Any]) -> R:
    for name, value in record.items():
        if name.endswith("_json") and isinstance(value, str):
            record[name] = json.loads(value)
    return cls(**record)
