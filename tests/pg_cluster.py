"""A throwaway PostgreSQL cluster for tests and benchmarks: Debian's `postgresql` binaries, a data
directory in a temp folder, a free port on 127.0.0.1, stopped (and deleted) at the end.

`make test` installs the package where it is missing (`make debian-packages`). PostgreSQL refuses to run
as root, so as root the cluster runs as the unprivileged user `nobody`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make debian-packages` (apt-get install postgresql)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, port: int, bindir: Path, as_user: list[str]):
        self.port, self.bindir, self._as_user = port, bindir, as_user

    def conninfo(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=rlaif dbname={dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its libpq connection string."""
        subprocess.run([*self._as_user, str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "rlaif", name], check=True, capture_output=True)
        return self.conninfo(name)


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="rlaif-pg-"))
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "nobody")
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "rlaif"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield Cluster(port, bindir, as_user)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
