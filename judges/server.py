"""A managed judge server: start the OpenAI-compatible server a config names, wait until it is
healthy, stop it afterwards. A server already answering at the judge's base_url is used as it is
(and left running), so production can point at a long-lived vLLM or llama.cpp deployment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field


class JudgeServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, description="argv of the server, e.g. llama-server -m judge.gguf --port 8091")
    health_path: str = Field(default="/health", description="GET on the base_url's host answers 200 once it is ready")
    startup_timeout_s: float = Field(default=600, gt=0, description="how long to wait for it to answer")


class JudgeServerError(RuntimeError):
    """The judge server would not start or become healthy (the message has its log's tail)."""


def health_url(base_url: str, health_path: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}{health_path}"


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def running_judge_server(settings: JudgeServerSettings | None, base_url: str, log_path: Path) -> Iterator[bool]:
    """Yields True when this call started the server (and will stop it), False when one was running."""
    url = health_url(base_url, settings.health_path if settings else "/health")
    if settings is None or is_healthy(url):
        yield False
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(settings.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # its own process group: stopped as a whole
    try:
        deadline = time.monotonic() + settings.startup_timeout_s
        while not is_healthy(url):
            if process.poll() is not None:
                raise JudgeServerError(f"judge server {settings.command[0]} exited with {process.returncode} "
                                       f"before {url} answered; log {log_path}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise JudgeServerError(f"judge server not healthy at {url} after {settings.startup_timeout_s:.0f} s; "
                                       f"log {log_path}:\n{_tail(log_path)}")
            time.sleep(0.5)
        yield True
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
