"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""

from __future__ import annotations

import logging

import pytest

from constitution.loader import load_constitution
from judges.openai_judge import OpenAIJudge, OpenAIJudgeSettings
from judges.stage import judge_pairs
from store.db import Store
from store.rows import JudgmentRow
from training.data import select_preferences

from helpers import seed_pairs
from openai_stub_server import StubOpenAIServer

SHORT = "Your refund for order #LS-1 is on its way."
LONG = "Thanks for writing in. Your refund for order #LS-1 is on its way and should arrive within five business days."


def settings(server: StubOpenAIServer, **overrides) -> OpenAIJudgeSettings:
    base = dict(base_url=server.base_url, model="stub-judge", api_key_env=None, concurrency=4, timeout_s=0.5,
                max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
    return OpenAIJudgeSettings(**{**base, **overrides})


def test_every_fault_is_retried_or_recorded_and_never_counted(tmp_path):
    constitution = load_constitution("bundled:support")
    faults = ["", "FAULT:429", "FAULT:500", "FAULT:slow", "FAULT:schema", "FAULT:truncated", "FAULT:always500"]
    with StubOpenAIServer(slow_s=1.5) as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"My refund is late. {f}", LONG, SHORT) for f in faults])
        verdicts = judge_pairs(store, OpenAIJudge(settings(server)), constitution, pairs)
        by_fault = {f: verdicts[p.pair_id] for f, p in zip(faults, pairs)}
        for f in ("", "FAULT:429", "FAULT:500", "FAULT:slow", "FAULT:schema"):
            v = by_fault[f]
            assert (v.status, v.winner, v.consistent) == ("ok", "b", True), (f, v.rationale)  # the shorter reply, both orders
        assert by_fault["FAULT:truncated"].status == "invalid" and by_fault["FAULT:truncated"].winner is None
        assert by_fault["FAULT:always500"].status == "error" and by_fault["FAULT:always500"].winner is None
        judgments = store.by_ids(JudgmentRow, [v.judgment_ab for v in verdicts.values()])
        truncated = judgments[by_fault["FAULT:truncated"].judgment_ab]
        assert truncated.parse_status == "invalid" and truncated.raw_response.count("---") == 1  # two attempts stored
        schema_retry = judgments[by_fault["FAULT:schema"].judgment_ab]
        assert schema_retry.parse_status == "ok" and "maybe" in schema_retry.raw_response
        assert all(j.prompt_tokens > 0 for j in judgments.values() if j.parse_status == "ok")
        # nothing invalid or errored becomes training data
        candidates = store.judged_pairs("r", verdicts[pairs[0].pair_id].judge_id, constitution.content_hash)
        trusted = {r.pair_id for r in select_preferences(candidates, human={})}
        assert trusted == {p.pair_id for f, p in zip(faults, pairs) if f not in ("FAULT:truncated", "FAULT:always500")}


def test_rejudging_a_round_makes_zero_requests(tmp_path):
    constitution = load_constitution("bundled:support")
    with StubOpenAIServer() as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Question {i}", LONG, SHORT) for i in range(5)])
        judge_pairs(store, OpenAIJudge(settings(server)), constitution, pairs)
        assert server.requests == 10
        judge_pairs(store, OpenAIJudge(settings(server)), constitution, pairs)  # a new judge object, same identity
        assert server.requests == 10


def test_request_budget_stops_spending(tmp_path):
    constitution = load_constitution("bundled:support")
    with StubOpenAIServer() as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Question {i}", LONG, SHORT) for i in range(5)])
        verdicts = judge_pairs(store, OpenAIJudge(settings(server, max_requests=4, concurrency=1)), constitution, pairs)
        assert server.requests == 4
        judged = store.by_ids(JudgmentRow, [j for v in verdicts.values() for j in (v.judgment_ab, v.judgment_ba)])
        assert sum(j.parse_status == "ok" for j in judged.values()) == 4
        assert all("budget" in j.rationale for j in judged.values() if j.parse_status == "error")


def test_falls_back_to_the_json_prompt_when_the_server_refuses_a_schema(tmp_path):
    constitution = load_constitution("bundled:support")
    with StubOpenAIServer(reject_json_schema=True) as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [("Where is my parcel?", LONG, SHORT)])
        verdicts = judge_pairs(store, OpenAIJudge(settings(server, concurrency=1)), constitution, pairs)
        assert verdicts["pair0"].status == "ok" and verdicts["pair0"].winner == "b"


def test_one_refused_schema_falls_back_for_that_request_only(tmp_path):
    """The server refuses the first request's schema (a transient 400): that request is asked again
    with the strict prompt, and every later request still offers the schema."""
    constitution = load_constitution("bundled:support")
    with StubOpenAIServer(reject_json_schema=1) as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Where is parcel {i}?", f"{LONG} ({i})", f"{SHORT} ({i})") for i in range(3)])
        verdicts = judge_pairs(store, OpenAIJudge(settings(server, concurrency=1)), constitution, pairs)
        assert all(v.status == "ok" for v in verdicts.values())
        assert server.requests == 3 * 2 + 1         # 3 pairs x 2 orders, and the one request asked again
        assert server.schema_requests == 3 * 2      # every request offered the schema first


def test_constitutional_ai_mode_judges_the_same_subset_in_both_orders(tmp_path):
    """What the server is asked: each pair's two orders name the same two model-judged principles,
    and different pairs get different subsets."""
    from openai_stub_server import _principles_and_replies

    constitution = load_constitution("bundled:support")
    judged = {p.id for p in constitution.principles if p.judged}
    with StubOpenAIServer() as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Question {i}", f"{LONG} ({i})", f"{SHORT} ({i})") for i in range(8)])
        judge_pairs(store, OpenAIJudge(settings(server, principles_per_comparison=2, concurrency=1)), constitution, pairs)
        asked: dict[str, list[frozenset[str]]] = {}
        for user in server.user_messages:
            ids, a, b = _principles_and_replies(user)
            asked.setdefault(min(a, b), []).append(frozenset(ids))  # both orders of a pair share its texts
    assert len(asked) == 8
    for subsets in asked.values():
        assert len(subsets) == 2 and subsets[0] == subsets[1] and len(subsets[0]) == 2 and subsets[0] <= judged
    assert len({subsets[0] for subsets in asked.values()}) > 1  # a subset per pair, not one fixed subset


def test_api_key_is_sent_but_never_stored_or_logged(tmp_path, monkeypatch, caplog, capfd):
    secret = "sk-test-DO-NOT-LEAK-9f8e7d6c"
    monkeypatch.setenv("RLAIF_TEST_JUDGE_KEY", secret)
    constitution = load_constitution("bundled:support")
    db = tmp_path / "j.duckdb"
    caplog.set_level(logging.DEBUG)
    with StubOpenAIServer() as server:
        judge_settings = settings(server, api_key_env="RLAIF_TEST_JUDGE_KEY")
        with Store(db) as store:
            pairs = seed_pairs(store, [("FAULT:500 hello", LONG, SHORT), ("hi", SHORT, LONG)])
            judge_pairs(store, OpenAIJudge(judge_settings), constitution, pairs)
        assert server.authorization == {f"Bearer {secret}"}
    # the config snapshot names the variable, not its value
    assert secret not in judge_settings.model_dump_json() and "RLAIF_TEST_JUDGE_KEY" in judge_settings.model_dump_json()
    assert secret.encode() not in db.read_bytes()
    wal = db.with_name(db.name + ".wal")
    assert not wal.exists() or secret.encode() not in wal.read_bytes()
    out, err = capfd.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in err


def test_rlaif_judge_rejudges_a_round_and_judge_stats_compares_judges(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from store.rows import RoundRow

    constitution = load_constitution("bundled:support")
    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        seed_pairs(store, [(f"Question {i}", LONG, SHORT) if i % 2 else (f"Question {i}", SHORT, LONG) for i in range(4)],
                   round_id="round-0001")
        store.append([RoundRow(round_id="round-0001", round_index=1, status="finished", policy_id="m",
                               constitution_hash=constitution.content_hash, seed=0, config_json={})])
    runner = CliRunner()
    with StubOpenAIServer() as server:
        for name in ("judge-one", "judge-two"):
            config = tmp_path / f"{name}.yaml"
            config.write_text(f"judge:\n  kind: openai\n  qualify: false\n  openai:\n    base_url: {server.base_url}\n    model: {name}\n"
                              f"    api_key_env: null\n")
            result = runner.invoke(app, ["judge", "--config", str(config), "--round", "1", "--db", str(db)])
            assert result.exit_code == 0, result.output
        assert server.requests == 16  # 2 judges x 4 pairs x 2 orders
        stats = runner.invoke(app, ["judge-stats", "--db", str(db)])
    assert stats.exit_code == 0, stats.output
    text = " ".join(stats.output.split())
    assert "openai:judge-one" in text and "openai:judge-two" in text
    assert "100% same winner, kappa 1.00 (n=4)" in text
    assert "resolves_request" in text  # per-principle vote split


def test_openai_kind_without_settings_is_a_config_error(tmp_path):
    from flows.config import ConfigError, load_config

    config = tmp_path / "c.yaml"
    config.write_text("judge:\n  kind: openai\n")
    with pytest.raises(ConfigError, match="judge.openai section"):
        load_config(config)


def test_cohen_kappa_on_a_worked_example():
    from stats.agreement import cohen_kappa

    # observed agreement 0.75; chance agreement (2*1 + 2*3) / 16 = 0.5; kappa = (0.75 - 0.5) / 0.5
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.5)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0


def test_vote_logprobs_turn_votes_into_soft_scores(tmp_path):
    constitution = load_constitution("bundled:support")
    with StubOpenAIServer() as server, Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [("Where is my refund?", LONG, SHORT)])
        verdicts = judge_pairs(store, OpenAIJudge(settings(server, vote_logprobs=True)), constitution, pairs)
        v = verdicts["pair0"]
        assert (v.status, v.winner, v.consistent) == ("ok", "b", True)
        ab = store.by_ids(JudgmentRow, [v.judgment_ab])[v.judgment_ab]
        model_votes = {k: x for k, x in ab.votes_json.items() if x["source"] == "model"}
        assert model_votes and all(x["vote"] == "b" and x["score"] == pytest.approx(-0.6) for x in model_votes.values())
        assert "p(A)=0.20 p(B)=0.80" in next(iter(model_votes.values()))["detail"]


def test_formulation_and_tie_margin_are_judge_settings_for_every_kind():
    from pydantic import ValidationError

    from judges.config import JudgeConfig

    endpoint = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": None}
    assert JudgeConfig(kind="openai", openai=endpoint).openai_formulation() == "pairwise_json"
    assert JudgeConfig().local_formulation() == "pointwise_fewshot"
    assert JudgeConfig(kind="openai", openai=endpoint).tie_margin == JudgeConfig().tie_margin
    with pytest.raises(ValidationError, match=r"judge.openai.tie_margin is now judge.tie_margin"):
        JudgeConfig(kind="openai", openai={**endpoint, "tie_margin": 0.05})
    with pytest.raises(ValidationError, match=r"principle_ab needs judge.kind local_logprob"):
        JudgeConfig(kind="openai", formulation="principle_ab", openai=endpoint)
    with pytest.raises(ValidationError, match=r"pairwise_json needs judge.kind openai"):
        JudgeConfig(formulation="pairwise_json")
