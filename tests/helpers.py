"""Test data helpers (importable from tests: pytest puts this folder on sys.path)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from store.db import Store
from store.rows import CompletionRow, PairRow, PromptRow


def seed_pairs(store: Store, texts: list[tuple[str, str, str]], round_id: str = "r") -> list[PairRow]:
    """Store one prompt and one pair per (prompt, text a, text b); returns the pairs."""
    prompts, completions, pairs = [], [], []
    for i, (prompt, text_a, text_b) in enumerate(texts):
        prompts.append(PromptRow(prompt_id=f"p{i}", text=prompt, source="t", tags=[], split="train"))
        for s, text in enumerate([text_a, text_b]):
            completions.append(CompletionRow(
                completion_id=f"c{i}-{s}", round_id=round_id, prompt_id=f"p{i}", model_id="m", purpose="train",
                sample_index=s, seed=0, text=text, token_ids=[1, 2], prompt_tokens=3, completion_tokens=2,
                finish_reason="stop", sum_logprob=-1.0, sampling_json={}))
        pairs.append(PairRow(pair_id=f"pair{i}", round_id=round_id, prompt_id=f"p{i}", purpose="train",
                             completion_a=f"c{i}-0", completion_b=f"c{i}-1"))
    store.append(prompts)
    store.append(completions)
    store.append(pairs)
    return pairs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout_s: float, what: str, every_s: float = 1.0):
    """Poll `check` until it returns something truthy (returned), or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_processes(processes, logs=()) -> None:
    """Terminate every started process (then kill what is still running after 30 s) and close their logs."""
    started = [p for p in processes if p is not None]
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    for log in logs:
        log.close()
