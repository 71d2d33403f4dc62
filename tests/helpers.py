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


# Check principles decide deterministically (and identically in both orders), so some pairs of the
# random tiny model's outputs are trustworthy; the model-judged principle still runs the local judge.
TINY_CONSTITUTION = """
name: test
principles:
  - id: short
    text: At most 5 words.
    weight: 2
    check: {max_words: 5}
  - id: helpful
    text: The reply helps the customer.
    weight: 0.1
"""


def tiny_round_settings(folder, model_dir) -> dict:
    """A round of the tiny model on the bundled prompts, small enough for fast tests (its constitution
    written into `folder`, its store there too): the `round_config` fixture's settings."""
    (folder / "constitution.yaml").write_text(TINY_CONSTITUTION)
    return {
        "seed": 3,
        "constitution": str(folder / "constitution.yaml"),
        "policy": {"path": str(model_dir)},
        "prompts": {"source": "bundled:support", "train_per_round": 8, "heldout": 3},
        "sampler": {"max_new_tokens": 10, "batch_size": 8},
        "judge": {"model_path": str(model_dir), "batch_size": 8},
        "routing": {"random_rate": 0.5, "high_stakes_tags": ["safety"]},
        "training": {"batch_size": 2, "epochs": 1, "min_pairs": 1, "lora_r": 4},
        # a bar of 0.01: any candidate not clearly worse is promoted, so tests can follow a lineage
        "eval": {"max_new_tokens": 10, "samples_per_prompt": 2, "margin": -0.49},
        "store": {"path": str(folder / "rlaif.duckdb")},
        "runtime": {"threads": 1},
    }
