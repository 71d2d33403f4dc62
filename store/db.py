"""The store: the only code that talks SQL. One API over a DuckDB file or a DuckLake, in parts:
store/connection.py (connecting, the lake, retries, transactions, the generic reads and writes),
store/schema.py (migrations), and one module of queries per family of tables: store/rounds.py,
store/judging.py, store/reviews.py. `Store` is all of them."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from store.connection import StoreError, StoreUnavailable
from store.judging import JudgingQueries
from store.location import StoreLocation
from store.reviews import ReviewQueries
from store.rounds import RoundQueries
from store.schema import LATEST_SCHEMA, Migrations

__all__ = ["LATEST_SCHEMA", "Store", "StoreError", "StoreUnavailable", "opener_for_requests"]


class Store(RoundQueries, JudgingQueries, ReviewQueries, Migrations):
    """A store, opened: read-only, or read-write (then brought to the current schema)."""

    def __init__(self, location: StoreLocation | str | Path, read_only: bool = False):
        super().__init__(location, read_only)
        if not read_only:
            self._migrate()

    def __enter__(self) -> Store:
        return self


def opener_for_requests(location: StoreLocation) -> Callable[[], AbstractContextManager[Store]]:
    """How a long-running server (the review page) holds the store, one request at a time: a DuckDB
    file is opened per request, so that between requests it is free for a round; a lake is opened
    once and shared (nothing waits for it)."""
    if location.kind == "ducklake":
        shared = Store(location)
        return lambda: nullcontext(shared)
    return lambda: Store(location)
