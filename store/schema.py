"""The store's schema: versioned migrations (store/migrations/NNN_name.sql) for a DuckDB file, and the
same tables for a lake, derived from them."""

from __future__ import annotations

from functools import cache
from importlib import resources

import duckdb

from store.connection import Connection
from store.rows import utcnow


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


class Migrations(Connection):
    """Brings the connected store to the current schema."""

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
