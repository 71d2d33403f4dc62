"""What every `rlaif` command shares: the consoles, the error rule, the store rule.

Errors: bad input (config, constitution, prompts, probes, a review, labels, a store path that is a
directory or missing, a store another process holds) is one line and exit code 2; a store that fails
while in use, a judge that may not judge, a judge server that will not start is one line and exit
code 1. The store: `--db` (a DuckDB file or `ducklake:<catalog>`) if given, else the
store of `--config` if given, else ./rlaif.duckdb.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from constitution.loader import ConstitutionError
from evals.probes import ProbeError
from flows.config import ConfigError, load_config
from flows.judging import JudgeNotQualified
from judges.server import JudgeServerError
from prompts.loader import PromptError
from review.imports import LabelFileError
from review.session import ReviewError
from store.db import LATEST_SCHEMA, Store, StoreError, StoreUnavailable
from store.location import LAKE_PREFIX, StoreLocation, parse_location
from store.rows import RoundRow

console = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable)

DB_OPTION = typer.Option(None, "--db", help="the store: a DuckDB file or ducklake:<catalog> "
                                            "(default: the store of --config, else ./rlaif.duckdb)")
CONFIG_OPTION = typer.Option(None, "--config", "-c", help="round config YAML (its store, constitution, review settings)")
SET_OPTION = typer.Option([], "--set", metavar="SECTION.FIELD=VALUE",
                          help="override a field of the config (VALUE read as YAML); repeatable")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # never wrap paths
    raise typer.Exit(code)


def guard(fn: F) -> F:
    """A command whose input errors end in a one-line message and exit code 2 (1 for the store and judge)."""
    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ConstitutionError, PromptError, ProbeError, ReviewError, LabelFileError, FileNotFoundError,
                StoreUnavailable) as exc:
            fail(str(exc), 2)
        except (StoreError, JudgeNotQualified, JudgeServerError) as exc:
            fail(str(exc), 1)
    return command  # type: ignore[return-value]


def store_location(db: Optional[str], config: Optional[Path] = None, overrides: Sequence[str] = ()) -> StoreLocation:
    """The one `--db` rule: --db, else the config's store, else ./rlaif.duckdb."""
    if db is not None:
        return parse_location(db)
    if config is not None:
        return load_config(config, overrides).store
    return StoreLocation()


def absolute_db(db: Optional[str]) -> Optional[str]:
    """A `--db` for another process (a flow run, a deployment): a file made absolute, a lake as given
    (a string, not a Path: a connection string may hold slashes a Path would fold)."""
    if db is None:
        return None
    return db if db.startswith(LAKE_PREFIX) else str(Path(db).resolve())


def usable_store(location: StoreLocation) -> None:
    """Fail now, in one line, if a round could not write to the store (a directory, another process
    holding the file), rather than from inside a flow run."""
    Store(location).close()


def existing_store(location: StoreLocation, read_only: bool = False) -> Store:
    """Open a store that must already exist (a round has run), for reading or for a small write. A
    store written by an older rlaif is brought to the current schema first (one read-write open)."""
    with Store(location, read_only=True) as found:  # fails with "no such ..." rather than creating an empty store
        behind = found.schema_version() < LATEST_SCHEMA
    if behind:
        Store(location).close()
    return Store(location, read_only=read_only)


def round_or_latest(store: Store, round_index: Optional[int]) -> RoundRow:
    rounds = store.rounds()
    if not rounds:
        raise StoreError(f"{store.name} has no rounds yet")
    if round_index is None:
        return rounds[-1]
    found = store.round_by_index(round_index)
    if found is None:
        raise StoreError(f"{store.name} has no round {round_index}")
    return found


def prefect_defaults() -> None:
    # Prefect starts a temporary local server when none is configured; give it time on a slow machine
    # and keep it from phoning home.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
