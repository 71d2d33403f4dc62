"""Progress of the long stages (sampling, judging, training): a bar on a terminal, lines elsewhere.

A rich bar redraws in place, which a file or a pipe (cron, CI, `nohup ... > log`) only receives when
the stage ends. So when stderr is not a terminal, progress is written as plain lines instead: the
stage, done/total and the rate, at most every RLAIF_PROGRESS_EVERY seconds (default 15), and once
at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def line_every_s() -> float:
    return float(os.environ.get("RLAIF_PROGRESS_EVERY", "15"))


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yields `update(done, total)`; on a terminal the bar stays on screen when the stage ends."""
    if not sys.stderr.isatty():
        with progress_lines(description) as update:
            yield update
        return
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def progress_lines(description: str) -> Iterator[Callable[[int, int], None]]:
    """Progress as lines on stderr: `HH:MM:SS | progress | stage: done/total, rate/s, elapsed`."""
    every_s = line_every_s()
    started = time.monotonic()
    last_at = [started]
    last: dict[str, int] = {"done": 0, "total": 0, "said": -1}

    def say(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        rate = f", {done / elapsed:.2f}/s" if elapsed > 0 and done else ""
        print(f"{time.strftime('%H:%M:%S')} | progress | {description}: {done}/{total}{rate}, {elapsed:.0f} s",
              file=sys.stderr, flush=True)
        last["said"] = done

    def update(done: int, total: int) -> None:
        last["done"], last["total"] = done, total
        now = time.monotonic()
        if now - last_at[0] >= every_s:
            last_at[0] = now
            say(done, total)

    yield update
    if last["said"] != last["done"] or last["total"] == 0:
        say(last["done"], last["total"])
