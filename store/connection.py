"""The store's connection: a DuckDB file or a DuckLake (store/location.py), and the writes and reads
every table shares.

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
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from store.location import StoreLocation, parse_location
from store.rows import Row, utcnow

R = TypeVar("R", bound=Row)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Tables of the store itself, not of the product's data.
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


BOOKKEEPING = ("schema_migrations", "store_writes")  # the store's own tables: never counted as data


class Connection:
    """A connection to one store, and the primitives every query is built from."""

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
    def released(self, stay_closed_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """Let other processes write for the block: a DuckDB file is closed (e.g. for a launched
        trainer or a stage on a worker), then reopened; a lake is shared anyway. An exception in
        `stay_closed_on` leaves it closed: the process is about to end (a run suspending at the
        review gate), and reopening would lock out whoever acts on that."""
        if self.lake:
            yield
            return
        self.close()
        try:
            yield
        except stay_closed_on:
            raise
        except BaseException:
            self.con = self._connect()
            raise
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
