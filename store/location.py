"""Where the store is: an embedded DuckDB file, or a DuckLake (catalog database + Parquet files).

    kind: duckdb    path: rlaif.duckdb                      one process writes at a time (the default)
    kind: ducklake  catalog: sqlite:/shared/rlaif.sqlite    many processes on one machine
                    catalog: postgres:host=db dbname=rlaif  many machines
                    data_path: /shared/rlaif-data           the Parquet files (shared storage)

On the command line (`--db`) the same is one string: a file path, or `ducklake:<catalog>` (a lake
remembers its data path, so only its creation needs `data_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PATH = "rlaif.duckdb"
LAKE_PREFIX = "ducklake:"


class StoreLocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["duckdb", "ducklake"] = Field(
        default="duckdb", description="duckdb: one file, one writing process; ducklake: many writers (docs/scaling.md)")
    path: str | None = Field(default=None, description="duckdb: the database file; empty = ./rlaif.duckdb")
    catalog: str | None = Field(default=None, description="ducklake: postgres:<libpq connection string> or sqlite:<file>")
    data_path: str | None = Field(default=None, description="ducklake: folder of the Parquet data files (needed to create the lake)")

    @model_validator(mode="after")
    def _complete(self) -> StoreLocation:
        if self.kind == "ducklake":
            if not self.catalog or self.catalog.split(":", 1)[0] not in ("postgres", "sqlite"):
                raise ValueError(f"store.catalog {self.catalog!r}: a ducklake store needs postgres:<connection string> "
                                 "or sqlite:<file>")
            if self.path:
                raise ValueError("store.path is the DuckDB file of kind duckdb; a ducklake store has catalog and data_path")
        elif self.catalog or self.data_path:
            raise ValueError("store.catalog and store.data_path belong to kind: ducklake")
        return self

    @property
    def file(self) -> Path:
        """The DuckDB file (kind duckdb)."""
        return Path(self.path or DEFAULT_PATH)

    @property
    def catalog_kind(self) -> str:
        """postgres | sqlite (kind ducklake)."""
        return (self.catalog or "").split(":", 1)[0]

    def describe(self) -> str:
        """For messages: the file, or the lake's catalog (a PostgreSQL password is never shown)."""
        if self.kind == "duckdb":
            return str(self.file)
        words = [w for w in (self.catalog or "").split() if not w.lower().startswith("password=")]
        return LAKE_PREFIX + " ".join(words)


def parse_location(value: str | Path) -> StoreLocation:
    """A `--db` argument: a DuckDB file path, or `ducklake:<catalog>`."""
    text = str(value)
    if text.startswith(LAKE_PREFIX):
        return StoreLocation(kind="ducklake", catalog=text[len(LAKE_PREFIX):])
    return StoreLocation(path=text)
