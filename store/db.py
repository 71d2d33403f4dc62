"""The store: the only module that talks SQL. One API over two kinds (store/location.py).

- duckdb: the embedded file. One read-write connection per process (DuckDB locks the file against
  every other process, even readers). The writing process leaves `<db>.holder.json` (PID, command,
  what it is doing) beside the file, so a process it locks out can say who holds the file.
- ducklake: DuckDB's lakehouse format, a catalog database (PostgreSQL or SQLite) plus Parquet data
  files, for many writers. Its extensions are loaded by path from their PyPI wheels (offline).
  DuckLake has no primary keys, and it merges concurrent inserts into one table instead of failing
  them, so every write transaction also bumps the single row of `store_writes`: two writers that
  overlap then conflict, one is rolled back and retried, and its retry sees the other's rows.

Either way, rows are keyed by deterministic ids and written in one Arrow batch per call, inserting
only keys the table does not have yet, so reruns and concurrent appends add nothing twice.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from store.location import StoreLocation, parse_location
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
    Stage,
    StageRunRow,
    TrainMetricRow,
    VerdictRow,
    utcnow,
)

R = TypeVar("R", bound=Row)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Tables of the store itself, not of the product's data.
BOOKKEEPING = ("schema_migrations", "store_writes")
# A statement or transaction that lost a race on a lake is tried this many times in all.
LAKE_WRITE_ATTEMPTS = 30
# What a lost race looks like: DuckLake's logical conflict, SQLite's lock on the catalog, or two
# processes creating the same lake's tables at once.
CONFLICT_MARKERS = ("conflict", "database is locked", "could not serialize", "deadlock", "already exists", "duplicate key")


class StoreError(RuntimeError):
    """The database could not be opened or used (message says which store and why)."""


class StoreUnavailable(StoreError):
    """The store's location is wrong (a directory, a missing database) or another process holds it:
    bad input for a command, not a failure of the store."""


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every `NNN_name.sql` shipped in store/migrations, in order."""
    found = []
    for entry in (resources.files("store") / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


LATEST_SCHEMA = _migrations()[-1][0]  # the schema version this code reads and writes


@cache
def _reference_schema() -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type)]} as the migrations build it, read off an in-memory DuckDB: the one
    definition a lake's tables are created from (DuckLake takes no key constraints or defaults)."""
    con = duckdb.connect()
    for _, _, sql in _migrations():
        con.execute(sql)
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = 'memory' "
            "ORDER BY table_name, column_index").fetchall():
        columns.setdefault(table, []).append((column, dtype))
    con.close()
    return columns


def _extension(package: str, name: str) -> str:
    """The path of a DuckDB extension inside its PyPI wheel (found without importing the package)."""
    spec = find_spec(package)
    folders = spec.submodule_search_locations if spec is not None else None
    found = sorted(Path(folders[0]).glob(f"extensions/*/{name}.duckdb_extension")) if folders else []
    if not found:
        raise StoreError(f"the DuckDB extension {name} is missing: pip install {package.replace('_', '-')}=={duckdb.__version__}")
    return str(found[-1])


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_conflict(exc: Exception) -> bool:
    return any(marker in str(exc).lower() for marker in CONFLICT_MARKERS)


def _retrying(once: Callable[[], T], lost_race: Callable[[duckdb.Error], bool]) -> T:
    """`once()`, again after a jittered wait (50 ms growing to 2 s) while it fails by losing a race."""
    for attempt in range(LAKE_WRITE_ATTEMPTS - 1):
        try:
            return once()
        except duckdb.Error as exc:
            if not lost_race(exc):
                raise
        time.sleep(random.uniform(0.5, 1.5) * min(2.0, 0.05 * 1.5 ** attempt))
    return once()  # the last attempt: whatever it raises is the error


class Store:
    def __init__(self, location: StoreLocation | str | Path, read_only: bool = False):
        # a config's store section (a StoreLocation with more fields) counts as the location it names
        self.location = (StoreLocation(**location.model_dump(include=set(StoreLocation.model_fields)))
                         if isinstance(location, StoreLocation) else parse_location(location))
        self.read_only = read_only
        self.lake = self.location.kind == "ducklake"
        self.name = self.location.describe()
        self._activity = ""  # what this process is doing with the file (see note())
        if not self.lake:
            if self.location.file.is_dir():
                raise StoreUnavailable(f"{self.name} is a directory, not a DuckDB file (give a file path, e.g. "
                                       f"{self.location.file / 'rlaif.duckdb'})")
            if read_only and not self.location.file.exists():
                raise StoreUnavailable(f"{self.name}: no such database (run a round first)")
            if not read_only:
                try:
                    self.location.file.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreUnavailable(f"{self.name}: cannot create its folder ({exc.strerror})") from None
        self.con = self._connect()
        if not read_only:
            self._migrate()

    @property
    def holder_file(self) -> Path:
        """Who holds the file for writing, and doing what: read by a process that cannot open it."""
        return self.location.file.with_name(self.location.file.name + ".holder.json")

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.lake:
            return self._attach_lake()
        try:
            con = duckdb.connect(str(self.location.file), read_only=self.read_only)
        except duckdb.IOException as exc:
            raise StoreUnavailable(self._in_use_message(exc)) from exc
        if not self.read_only:
            self._write_holder()
        return con

    def _attach_lake(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with the lake attached as `lake` (and used as the default database)."""
        loc = self.location
        assert loc.catalog is not None  # a ducklake location always names one (StoreLocation checks)
        con = duckdb.connect()
        con.execute(f"LOAD {_sql_text(_extension('duckdb_extension_ducklake', 'ducklake'))}")
        scanner = "postgres_scanner" if loc.catalog_kind == "postgres" else "sqlite_scanner"
        con.execute(f"LOAD {_sql_text(_extension('duckdb_extension_' + scanner, scanner))}")
        options = []
        if loc.data_path:
            options.append(f"DATA_PATH {_sql_text(loc.data_path)}")
            if not self.read_only and "://" not in loc.data_path:
                Path(loc.data_path).mkdir(parents=True, exist_ok=True)
        if self.read_only:
            options.append("READ_ONLY")
        if loc.catalog_kind == "sqlite":
            catalog_file = Path(loc.catalog.split(":", 1)[1])
            if self.read_only and not catalog_file.exists():
                raise StoreError(f"{self.name}: no such lake catalog (run a round first)")
            catalog_file.parent.mkdir(parents=True, exist_ok=True)
        attach = f"ATTACH {_sql_text('ducklake:' + loc.catalog)} AS lake {'(' + ', '.join(options) + ')' if options else ''}"
        try:  # processes creating a new lake at once race on its metadata tables
            _retrying(lambda: con.execute(attach), _is_conflict)
        except duckdb.Error as exc:
            con.close()
            hint = "" if loc.data_path else " (a new lake needs store.data_path)"
            raise StoreError(f"{self.name}: cannot attach the lake{hint}: {exc}") from exc
        con.execute("USE lake")
        return con

    def _write_holder(self) -> None:
        holder = {"pid": os.getpid(), "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:3]),
                  "since": utcnow().isoformat(timespec="seconds"), "activity": self._activity}
        partial = self.holder_file.with_name(self.holder_file.name + ".partial")
        partial.write_text(json.dumps(holder))
        partial.replace(self.holder_file)

    def note(self, activity: str) -> None:
        """Say what this process is doing with the file (shown to anyone it locks out; a lake locks nobody out)."""
        self._activity = activity
        if not self.read_only and not self.lake:
            self._write_holder()

    def _in_use_message(self, exc: Exception) -> str:
        try:
            holder = json.loads(self.holder_file.read_text())
            os.kill(holder["pid"], 0)  # still alive? (signal 0 only checks)
        except (OSError, ValueError, KeyError):
            return f"{self.name} is in use by another process or unreadable: {exc}"
        doing = f": {holder['activity']}" if holder.get("activity") else ""
        return (f"{self.name} is in use by PID {holder['pid']} ({holder['command']}{doing}, since {holder['since']} UTC). "
                "DuckDB allows one writing process per file: wait for it to finish or stop it "
                "(or use a ducklake store, which many processes share).")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        if not self.read_only and not self.lake:
            self._drop_holder()

    def _drop_holder(self) -> None:
        try:
            if json.loads(self.holder_file.read_text()).get("pid") == os.getpid():
                self.holder_file.unlink()
        except (OSError, ValueError):
            pass

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let other processes write for the block: a DuckDB file is closed (e.g. for a launched
        trainer or a stage on a worker), then reopened; a lake is shared anyway."""
        if self.lake:
            yield
            return
        self.close()
        try:
            yield
        finally:
            self.con = self._connect()

    # ---- transactions -------------------------------------------------------------------------
    def _transact(self, work: Callable[[], T], bump_writes: bool = True) -> T:
        """Run `work` in one transaction: all of its statements, or none. On a lake the transaction
        also bumps `store_writes`, so it conflicts with any other writer's overlapping transaction;
        the loser is rolled back and runs `work` again on the newer snapshot. (Only the schema's
        creation, which makes `store_writes`, does not bump it.)"""
        def once() -> T:
            self.con.execute("BEGIN TRANSACTION")
            try:
                if self.lake and bump_writes:
                    self.con.execute("UPDATE store_writes SET writes = writes + 1")
                result = work()
                self.con.execute("COMMIT")
                return result
            except BaseException:
                try:
                    self.con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already ended the transaction
                raise
        return _retrying(once, self._lost_race)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one read; on a lake, a read that meets a catalog lock is retried."""
        def once() -> tuple[list[str], list[tuple]]:
            cursor = self.con.execute(sql, list(params))
            return [d[0] for d in cursor.description], cursor.fetchall()
        return _retrying(once, self._lost_race)

    def _lost_race(self, exc: duckdb.Error) -> bool:
        """Another writer of the same lake got there first: worth retrying (a DuckDB file has no such races)."""
        return self.lake and _is_conflict(exc)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._transact(lambda: self.con.execute(sql, list(params)))

    # ---- schema -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        if self.lake:
            if self._lake_schema_version() < _migrations()[-1][0]:  # a read first: opening a current lake writes nothing
                self._transact(self._create_lake_schema, bump_writes=False)
            return
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
        )
        applied = {v for (v,) in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        pending = [m for m in _migrations() if m[0] not in applied]
        for version, name, sql in pending:
            def apply(sql: str = sql, version: int = version, name: str = name) -> None:
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])
            self._transact(apply)
        if pending:
            # Into the file now, not left in the write-ahead log: DuckDB 1.5 cannot replay an ALTER that
            # sets a column default (its binder has no database yet), so a process killed before its first
            # checkpoint would leave a file that no longer opens.
            self.con.execute("CHECKPOINT")

    def _lake_schema_version(self) -> int:
        _, found = self._query("SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
                               "AND table_name = 'schema_migrations'")
        return self.schema_version() if found else 0

    def _create_lake_schema(self) -> None:
        """Bring a lake to the migrations' schema: create missing tables, add missing columns (NULL
        in older rows), record the versions. Idempotent, so racing processes may all run it."""
        existing: dict[str, set[str]] = {}
        for table, column in self.con.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_catalog = current_database() AND table_schema = 'main'").fetchall():
            existing.setdefault(table, set()).add(column)
        if "store_writes" not in existing:
            self.con.execute("CREATE TABLE store_writes (writes BIGINT)")
            self.con.execute("INSERT INTO store_writes VALUES (0)")
        else:
            self.con.execute("UPDATE store_writes SET writes = writes + 1")
        if "schema_migrations" not in existing:
            self.con.execute("CREATE TABLE schema_migrations (version INTEGER, name VARCHAR, applied_at TIMESTAMP)")
        for table, columns in _reference_schema().items():
            if table not in existing:
                self.con.execute(f"CREATE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns)})")
                continue
            for column, dtype in columns:
                if column not in existing[table]:
                    self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {dtype}")
        applied = {v for (v,) in self.con.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, _ in _migrations():
            if version not in applied:
                self.con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])

    def schema_version(self) -> int:
        return self._query("SELECT coalesce(max(version), 0) FROM schema_migrations")[1][0][0]

    # ---- writes -------------------------------------------------------------------------------
    def append(self, rows: Sequence[Row]) -> int:
        """Insert rows of one table in one Arrow batch; rows whose key exists are skipped.

        Returns the number of rows actually inserted.
        """
        return self._insert(rows, replace=False)

    def replace(self, rows: Sequence[Row]) -> int:
        """Insert rows of one table, replacing rows with the same key: only for derived rows (verdicts,
        recomputed from the stored judgments when the qualification gate changes what counts)."""
        return self._insert(rows, replace=True)

    def _insert(self, rows: Sequence[Row], replace: bool) -> int:
        """One Arrow batch, in one transaction: (replace: delete the batch's keys, then) insert the
        rows whose key the table does not have. Returns how many rows the table grew by."""
        if not rows:
            return 0
        cls = type(rows[0])
        if any(type(r) is not cls for r in rows):
            raise ValueError("append() and replace() take rows of a single table")
        table, keys = cls.table, ", ".join(cls.key)
        same_key = " AND ".join(f"t.{k} = i.{k}" for k in cls.key)
        incoming = pa.Table.from_pylist([_to_record(r) for r in rows])

        def work() -> int:
            self.con.register("_incoming", incoming)
            try:
                before = self._count(table)
                if replace:
                    self.con.execute(f"DELETE FROM {table} t WHERE EXISTS (SELECT 1 FROM _incoming i WHERE {same_key})")
                self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM (SELECT DISTINCT ON ({keys}) * FROM _incoming) i "
                                 f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {same_key})")
                return self._count(table) - before
            finally:
                self.con.unregister("_incoming")
        return self._transact(work)

    def _count(self, table: str) -> int:
        return self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    def finish_round(self, round_id: str, status: str, reason: str | None, summary: dict, candidate_id: str | None = None,
                     train_run_id: str | None = None) -> None:
        """A round ends (finished or failed): its status, the summary for people, the ids for code (its
        judge's id was stored when judging was done: set_round_judge)."""
        self._write("UPDATE rounds SET status = ?, status_reason = ?, summary_json = ?, finished_at = ?, candidate_id = ?, "
                    "train_run_id = ? WHERE round_id = ?",
                    [status, reason, json.dumps(summary), utcnow(), candidate_id, train_run_id, round_id])

    def set_promotion(self, model_id: str, promoted: bool, reason: str) -> None:
        self._write("UPDATE models SET promoted = ?, promotion_reason = ? WHERE model_id = ?", [promoted, reason, model_id])

    # ---- generic reads ------------------------------------------------------------------------
    def _select(self, cls: type[R], where: str = "TRUE", params: Sequence[Any] = (), order: str = "") -> list[R]:
        columns, rows = self._query(f"SELECT * FROM {cls.table} WHERE {where} {('ORDER BY ' + order) if order else ''}", params)
        return [_from_record(cls, dict(zip(columns, values))) for values in rows]

    def by_ids(self, cls: type[R], ids: Iterable[str]) -> dict[str, R]:
        """Rows of a single-key table whose key is in `ids`, keyed by id."""
        (key,) = cls.key
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        rows = self._select(cls, f"{key} IN (SELECT unnest(?))", [wanted])
        return {getattr(r, key): r for r in rows}

    def count_rows(self) -> dict[str, int]:
        _, tables = self._query("SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
                                "AND table_schema = 'main' AND table_name NOT IN (SELECT unnest(?)) ORDER BY table_name",
                                [list(BOOKKEEPING)])
        return {t: self._query(f"SELECT count(*) FROM {t}")[1][0][0] for (t,) in tables}

    def primary_keys(self) -> dict[str, list[tuple]]:
        """Every table's primary keys, sorted: what two runs of the same rounds must agree on."""
        tables = {cls.table: cls.key for cls in Row.__subclasses__()}
        return {t: sorted(self._query(f"SELECT {', '.join(key)} FROM {t}")[1]) for t, key in sorted(tables.items())}

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
                raise StoreError(f"model {next_id} is not in {self.name}")
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

    def judged_pairs(self, round_id: str, judge_id: str, constitution_hash: str) -> list[PairRecord]:
        """The round's training pairs with texts, token ids and (if judged) the judge's verdict.

        Round-robin comparisons (n>2) only rank samples; their max_min selections are the training pairs.
        """
        columns, rows = self._query(
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
        return [_from_record(PairRecord, dict(zip(columns, values))) for values in rows]

    def pair_texts(self, purpose: str) -> dict[str, tuple[str, str, str]]:
        """pair id -> (prompt, text a, text b) of every pair with this purpose."""
        return self._pair_texts("p.purpose = ?", [purpose])

    def pair_texts_of(self, pair_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """pair id -> (prompt, text a, text b) of these pairs."""
        return self._pair_texts("p.pair_id IN (SELECT unnest(?))", [list(pair_ids)])

    def _pair_texts(self, where: str, params: Sequence[Any]) -> dict[str, tuple[str, str, str]]:
        _, rows = self._query(
            f"""
            SELECT p.pair_id, pr.text, ca.text, cb.text FROM pairs p
            JOIN prompts pr ON pr.prompt_id = p.prompt_id
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            WHERE {where}
            """, params)
        return {pair_id: (prompt, a, b) for pair_id, prompt, a, b in rows}

    def pairs_by_texts(self, texts: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[tuple[str, bool]]]:
        """(prompt, text a, text b) -> [(pair id, swapped)] of the stored pairs with that prompt and those two
        completions; swapped: the pair holds them the other way round."""
        if not texts:
            return {}
        prompts, texts_a, texts_b = (list(column) for column in zip(*texts))
        _, rows = self._query(
            """
            SELECT l.prompt, l.text_a, l.text_b, p.pair_id, ca.text <> l.text_a AS swapped
            FROM (SELECT unnest(?) AS prompt, unnest(?) AS text_a, unnest(?) AS text_b) l
            JOIN prompts pr ON pr.text = l.prompt
            JOIN pairs p ON p.prompt_id = pr.prompt_id
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            WHERE (ca.text = l.text_a AND cb.text = l.text_b) OR (ca.text = l.text_b AND cb.text = l.text_a)
            ORDER BY p.pair_id
            """,
            [prompts, texts_a, texts_b],
        )
        found: dict[tuple[str, str, str], list[tuple[str, bool]]] = {}
        for prompt, text_a, text_b, pair_id, swapped in rows:
            found.setdefault((prompt, text_a, text_b), []).append((pair_id, bool(swapped)))
        return found

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

    def stage_run(self, round_id: str, stage: Stage) -> StageRunRow | None:
        found = self._select(StageRunRow, "round_id = ? AND stage = ?", [round_id, stage])
        return found[0] if found else None

    def stage_runs(self, round_id: str) -> list[StageRunRow]:
        return self._select(StageRunRow, "round_id = ?", [round_id], "finished_at")

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
        self._write("DELETE FROM review_sessions WHERE session_sha256 = ?", [session_sha256])

    def revoke_reviewer(self, reviewer_id: str) -> None:
        """Stop a reviewer's token and end their sessions (their reviews stay)."""
        def revoke() -> None:
            self.con.execute("UPDATE reviewers SET revoked_at = ? WHERE reviewer_id = ?", [utcnow(), reviewer_id])
            self.con.execute("DELETE FROM review_sessions WHERE reviewer_id = ?", [reviewer_id])
        self._transact(revoke)

    def reissue_reviewer_token(self, reviewer_id: str, token_sha256: str) -> None:
        """A revoked reviewer gets a new token (the old one stays dead: its hash is replaced)."""
        self._write("UPDATE reviewers SET token_sha256 = ?, revoked_at = NULL WHERE reviewer_id = ?",
                         [token_sha256, reviewer_id])

    def reviews_of_round(self, round_id: str) -> list[ReviewRow]:
        return self._select(ReviewRow, "pair_id IN (SELECT pair_id FROM review_queue WHERE round_id = ?)", [round_id],
                            "created_at, review_id")

    def reviews_of_pairs(self, pair_ids: Iterable[str]) -> list[ReviewRow]:
        return self._select(ReviewRow, "pair_id IN (SELECT unnest(?))", [list(pair_ids)], "review_id")

    def principle_reviews(self) -> list[ReviewRow]:
        """Every label about one principle (not skips), of any round or gold set."""
        return self._select(ReviewRow, "principle IS NOT NULL AND winner <> 'skip'", [], "review_id")

    def delete_review(self, review_id: str) -> None:
        """A reviewer's undo: the one row the product ever removes (it was a human's slip, not data)."""
        self._write("DELETE FROM reviews WHERE review_id = ?", [review_id])

    def set_round_status(self, round_id: str, status: str, reason: str | None) -> None:
        self._write("UPDATE rounds SET status = ?, status_reason = ? WHERE round_id = ?", [status, reason, round_id])

    def set_round_judge(self, round_id: str, judge_id: str) -> None:
        """The judge whose verdicts the round uses, stored as soon as its judging is done, so that status,
        report and export can read the round's verdicts while it goes on."""
        self._write("UPDATE rounds SET judge_id = ? WHERE round_id = ?", [judge_id, round_id])

    def set_round_config(self, round_id: str, config_json: dict) -> None:
        self._write("UPDATE rounds SET config_json = ? WHERE round_id = ?", [json.dumps(config_json, sort_keys=True), round_id])

    def set_flow_run(self, round_id: str, flow_run_id: str) -> None:
        self._write("UPDATE rounds SET flow_run_id = ? WHERE round_id = ?", [flow_run_id, round_id])

    def release_review(self, round_id: str) -> None:
        self._write("UPDATE rounds SET review_released = true WHERE round_id = ?", [round_id])

    def agreement(self, round_id: str) -> list[AgreementRow]:
        """The latest agreement rows of a round (one computation per judge and constitution)."""
        return self._select(
            AgreementRow,
            "round_id = ? AND computed_at = (SELECT max(computed_at) FROM agreement WHERE round_id = ?)",
            [round_id, round_id], "scope, subject")


def opener_for_requests(location: StoreLocation) -> Callable[[], AbstractContextManager[Store]]:
    """How a long-running server (the review page) holds the store, one request at a time: a DuckDB
    file is opened per request, so that between requests it is free for a round; a lake is opened
    once and shared (nothing waits for it)."""
    if location.kind == "ducklake":
        shared = Store(location)
        return lambda: nullcontext(shared)
    return lambda: Store(location)


def _to_record(row: Row) -> dict[str, Any]:
    record = row.model_dump()
    for name, value in record.items():
        if name.endswith("_json") and value is not None:
            record[name] = json.dumps(value, sort_keys=True)
    return record


def _from_record(cls: type[M], record: dict[str, Any]) -> M:
    for name, value in record.items():
        if name.endswith("_json") and isinstance(value, str):
            record[name] = json.loads(value)
    return cls(**record)
