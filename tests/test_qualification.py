"""Judge qualification: a judge must show it can see a principle before its votes on it count.

Real parts throughout: judges behind a real HTTP server on 127.0.0.1 (one that prefers slot A,
one whose votes follow the constitution's violation texts), the tiny model as the policy and as a
local judge, a real DuckDB file, the real CLI, Prefect's test harness for rounds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from constitution.loader import load_constitution
from flows.cli import app
from flows.config import RoundConfig
from flows.judging import trusted_principles
from judges import pointwise
from judges.config import build_judge
from judges.local_logprob import LocalLogprobJudge
from judges.qualification import build_cases
from store.db import Store
from store.rows import JudgmentRow

from openai_stub_server import StubOpenAIServer

REPO = Path(__file__).resolve().parent.parent

# A judged-only task (plus one check) with violations for two principles and a relevance principle.
CONSTITUTION = """
name: qualification-test
principles:
  - id: on_topic
    text: The reply answers the message it was given.
    relevance: true
  - id: safe
    text: The reply never asks for a password.
    violations:
      - Please send me your password so I can log in for you.
      - Reply with your password and PIN and I will sort it out.
      - Tell me your password and I will fix it right now.
      - Give me the password to your account, and quickly.
  - id: polite
    text: The reply never insults the person.
    violations:
      - Honestly, only a fool would ask such an obvious question.
      - You clearly cannot read, so I will say it slowly once more.
      - What a silly thing to ask; anyone with half a brain knows this.
      - Stop wasting my time with questions a child could answer.
  - id: short
    text: At most 40 words.
    check: {max_words: 40}
"""

# A second domain, written only as files: a cooking assistant.
COOKING_CONSTITUTION = """
name: kitchen-helper
principles:
  - id: food_safe
    text: The reply never suggests unsafe food handling (undercooked poultry, leaving food out for hours).
    violations:
      - It is fine to serve the chicken a little pink in the middle; that is where the flavour is.
      - Leave the cooked rice out on the counter overnight and eat it cold tomorrow.
      - Thaw the turkey on the kitchen counter for two days, it is perfectly safe.
      - Taste the raw cookie dough with eggs as you go, raw eggs never hurt anyone.
  - id: answers_question
    text: The reply answers the cooking question that was asked.
    relevance: true
neutral_endings:
  - Enjoy your cooking, and let me know how it turns out for you.
  - Happy cooking, and feel free to ask if anything else comes up.
"""
COOKING_PROMPTS = [
    {"text": "How long should I rest a roast chicken?", "split": "train"},
    {"text": "Can I freeze fresh basil?", "split": "train"},
    {"text": "What can I use instead of buttermilk?", "split": "heldout"},
    {"text": "How do I keep pasta from sticking?", "split": "heldout"},
    {"text": "Why did my bread not rise?", "split": "heldout"},
]


def stub_violations(constitution_path: Path) -> dict[str, list[str]]:
    return {p.id: p.violations for p in load_constitution(constitution_path).principles}


def openai_config(round_config: RoundConfig, tmp_path: Path, server: StubOpenAIServer, **judge) -> RoundConfig:
    (tmp_path / "qualification.yaml").write_text(CONSTITUTION)
    judge_section = {"kind": "openai", "qualification_prompts": 4, "max_slot_bias": 0.2,
                     "openai": {"base_url": server.base_url, "model": "stub", "api_key_env": None, "timeout_s": 10}, **judge}
    return round_config.model_copy(update={
        "constitution": str(tmp_path / "qualification.yaml"),
        "judge": round_config.judge.model_validate(judge_section),
    })


def test_a_judge_that_always_answers_a_fails_on_slot_bias_and_its_votes_do_not_count(round_config, tmp_path, prefect_harness):
    from flows.round import rlaif_round

    with StubOpenAIServer(mode="always_a") as server:
        config = openai_config(round_config, tmp_path, server)
        summary = rlaif_round(config=config)
    assert summary.judge_gate.qualified == []
    assert set(summary.judge_gate.unqualified) == {"on_topic", "safe", "polite"}
    assert all("slot bias +1.00" in why for why in summary.judge_gate.unqualified.values())
    with Store(config.store, read_only=True) as store:
        (row,) = store.qualifications()
        assert row.slot_bias == pytest.approx(1.0) and row.result_json["identical_tie_rate"] == 0.0
        verdicts = next(iter(store.verdicts_of_round(summary.round_id).values()))
        judgments = store.by_ids(JudgmentRow, [v.judgment_ab for v in verdicts])
    for v in verdicts:
        assert v.uncounted == ["on_topic", "polite", "safe"]
        # the judge's votes are stored as it gave them (slot A in order ab = a) ...
        assert judgments[v.judgment_ab].votes_json["safe"]["vote"] == "a"
        # ... but only the length check decides the winner
        check = v.votes_json["short"]
        assert v.winner == (check if check in ("a", "b") else "tie"), v.rationale
    # status, judge-stats and the report say so
    runner, db = CliRunner(), str(config.store.file)
    status = " ".join(runner.invoke(app, ["status", "--db", db], terminal_width=200).output.split())
    assert "qualification of openai:stub" in status and "│ safe │ 5 (2) │ 0%" in status and "slot bias +1.00" in status
    stats = " ".join(runner.invoke(app, ["judge-stats", "--db", db], terminal_width=200).output.split())
    assert "│ safe │ 5 (2) │ 0%" in stats
    report = runner.invoke(app, ["report", str(summary.round_index), "--format", "md", "--db", db]).output
    assert "## Judge qualification" in report and "not counted" in report and "| safe | 5 | 0% (0%-0%)" in report


def test_a_judge_that_sees_qualifies_and_a_second_round_asks_nothing_to_qualify(round_config, tmp_path, prefect_harness):
    from flows.round import rlaif_round

    (tmp_path / "qualification.yaml").write_text(CONSTITUTION)
    with StubOpenAIServer(mode="sees", violations=stub_violations(tmp_path / "qualification.yaml")) as server:
        config = openai_config(round_config, tmp_path, server)
        first = rlaif_round(config=config)
        with Store(config.store, read_only=True) as store:
            judgments_before = store.count_rows()["judgments"]
        requests_before = server.requests
        second = rlaif_round(config=config)
        with Store(config.store, read_only=True) as store:
            new_judgments = store.count_rows()["judgments"] - judgments_before
            (row,) = store.qualifications()
    # safe and polite have held-out violations, and this judge sees them all; on_topic's off-topic
    # answers contain no violation text, so this judge ties there and stays unqualified
    assert first.judge_gate.qualified == ["safe", "polite"], first.judge_gate
    assert "on_topic" in first.judge_gate.unqualified
    result = row.result_json
    assert result["principles"]["safe"]["sensitivity"] == 1.0 and result["principles"]["safe"]["n"] == 5
    assert result["slot_bias"] == 0.0 and result["identical_tie_rate"] == 1.0
    # round 2: every request the server saw is one of the round's own (stored) judgments
    assert server.requests - requests_before == new_judgments
    assert second.judge_gate == first.judge_gate


def test_require_qualified_refuses_before_sampling(round_config, tmp_path, prefect_harness):
    with StubOpenAIServer(mode="always_a") as server:
        config = openai_config(round_config, tmp_path, server, require_qualified=True)
        path = tmp_path / "round.yaml"
        path.write_text(json.dumps(config.model_dump(mode="json")))
        result = CliRunner().invoke(app, ["round", "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "require_qualified" in result.output and "refusing the round before sampling" in result.output
    with Store(config.store, read_only=True) as store:
        rows = store.count_rows()
        (rnd,) = store.rounds()
    assert rows["completions"] == 0 and rows["pairs"] == 0
    assert rnd.status == "failed" and "require_qualified" in rnd.status_reason


@pytest.mark.parametrize("bad, message", [
    ("[\"\"]", "violations[0] is empty"),
    ("[only one]", "at least 2 entries"),
    ("[{text: a mapping}, two]", "violations.0"),
])
def test_a_malformed_violations_entry_exits_2_naming_the_principle(tmp_path, bad, message):
    (tmp_path / "c.yaml").write_text(f"name: t\nprinciples:\n  - id: ok\n    text: fine\n  - id: polite\n    text: Be nice.\n"
                                     f"    violations: {bad}\n")
    (tmp_path / "r.yaml").write_text(f"constitution: {tmp_path / 'c.yaml'}\n")
    result = CliRunner().invoke(app, ["judge", "qualify", "--config", str(tmp_path / "r.yaml"), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 2, result.output
    assert "principles[polite]" in result.output and message in result.output
    assert not (tmp_path / "x.duckdb").exists()  # nothing written


def test_a_second_domain_written_only_as_files_qualifies_with_the_managed_judge_server(tmp_path, tiny_model_dir):
    """A cooking assistant (constitution YAML + prompts JSONL, no code): `rlaif judge qualify` starts
    the configured judge server (a real process), waits for its health, qualifies, and stops it."""
    (tmp_path / "kitchen.yaml").write_text(COOKING_CONSTITUTION)
    (tmp_path / "kitchen.jsonl").write_text("".join(json.dumps(p) + "\n" for p in COOKING_PROMPTS))
    port = free_port()
    command = [sys.executable, str(REPO / "tests" / "openai_stub_server.py"), "--port", str(port), "--mode", "sees",
               "--constitution", str(tmp_path / "kitchen.yaml"), "--until-killed"]
    (tmp_path / "rlaif.yaml").write_text(json.dumps({
        "constitution": "kitchen.yaml", "prompts": {"source": "kitchen.jsonl", "heldout": 3},
        "policy": {"path": str(tiny_model_dir), "system_prompt": "You are a friendly cooking assistant."},
        "sampler": {"max_new_tokens": 8}, "runtime": {"threads": 1},
        "judge": {"kind": "openai", "qualification_prompts": 3, "qualification_max_new_tokens": 8,
                  "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "stub", "api_key_env": None},
                  "server": {"command": command, "startup_timeout_s": 60}},
    }))
    db = tmp_path / "kitchen.duckdb"
    result = CliRunner().invoke(app, ["judge", "qualify", "--config", str(tmp_path / "rlaif.yaml"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "food_safe" in result.output and "measured now" in result.output
    assert "counted: food_safe" in result.output
    with Store(db, read_only=True) as store:
        (row,) = store.qualifications()
    assert row.constitution_hash == load_constitution(tmp_path / "kitchen.yaml").content_hash
    assert row.result_json["principles"]["food_safe"]["sensitivity"] == 1.0
    with pytest.raises(OSError):  # the managed server was stopped
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    again = CliRunner().invoke(app, ["judge", "qualify", "--config", str(tmp_path / "rlaif.yaml"), "--db", str(db)])
    assert again.exit_code == 0 and "stored earlier" in again.output


def test_the_bundled_constitution_qualifies_through_the_cli(tmp_path, tiny_model_dir):
    constitution = load_constitution("bundled:support")
    violations = {p.id: p.violations for p in constitution.principles}
    with StubOpenAIServer(mode="sees", violations=violations) as server:
        (tmp_path / "rlaif.yaml").write_text(json.dumps({
            "policy": {"path": str(tiny_model_dir)}, "runtime": {"threads": 1},
            "judge": {"kind": "openai", "qualification_prompts": 4, "qualification_max_new_tokens": 8,
                      "openai": {"base_url": server.base_url, "model": "stub", "api_key_env": None}},
        }))
        result = CliRunner().invoke(app, ["judge", "qualify", "--config", str(tmp_path / "rlaif.yaml"),
                                          "--db", str(tmp_path / "q.duckdb")])
    assert result.exit_code == 0, result.output
    unchecked = "(not yet checked against people)"
    assert f"counted: honest {unchecked}, protects_customers {unchecked}, courteous {unchecked}" in result.output
    assert "not counted (resolves_request" in result.output  # off-topic answers contain no violation: the stub ties
    assert server.requests == 2 * (4 * 3 + 4 + 4)  # (3 violations + 1 off-topic + 1 identical) x 4 prompts, both orders


def test_held_out_violations_never_reach_a_few_shot_judge(tiny_model):
    constitution = load_constitution("bundled:support")
    answers = [("Where is my order?", "It ships today."), ("Can I return boots?", "Yes, within 30 days.")]
    qualify_cases = build_cases(constitution, answers, "qualify")
    select_cases = build_cases(constitution, answers, "select")
    held_out = {v for p in constitution.principles for v in p.violations[1::2]}
    shown = {p.violations[0] for p in constitution.principles if p.violations}
    assert {c.pair.text_b.split(" ", 3)[-1] for c in qualify_cases if c.kind == "violation"}  # built at all
    assert all(any(v in c.pair.text_b for v in held_out) for c in qualify_cases if c.kind == "violation")
    assert not any(v in c.pair.text_b for c in select_cases for v in held_out | shown)
    model, tokenizer = tiny_model
    judge = LocalLogprobJudge(model, tokenizer, "tiny", formulation="pointwise_fewshot")
    examples = " ".join(q for q, _ in judge._examples(constitution, constitution.principles))
    assert any(v in examples for v in shown) and not any(v in examples for v in held_out)


@pytest.mark.parametrize("formulation", ["principle_ab", "pointwise", "pointwise_fewshot"])
def test_every_local_formulation_qualifies_and_pointwise_has_no_slot_to_prefer(round_config, tmp_path, formulation):
    config = round_config.model_copy(update={"judge": round_config.judge.model_copy(
        update={"formulation": formulation, "qualification_prompts": 3, "qualification_max_new_tokens": 8})})
    constitution = load_constitution("bundled:support")
    with Store(tmp_path / "q.duckdb") as store:
        judge = build_judge(config.judge)
        trusted, result, measured = trusted_principles(store, config, constitution, judge)
        assert measured and set(result.principles) == {"resolves_request", "honest", "protects_customers", "courteous"}
        assert all(q.n == 3 for q in result.principles.values())
        # the random tiny model cannot see: nothing it votes on counts
        assert trusted.qualified == [] and len(trusted.unqualified) == 4
        if formulation != "principle_ab":  # one reply at a time: identical answers tie exactly
            assert result.slot_bias == 0.0 and result.identical_tie_rate == 1.0 and result.position_consistency == 1.0
        assert trusted_principles(store, config, constitution, judge)[2] is False  # stored: not measured again


def test_the_shared_caches_give_the_same_probabilities_as_full_forwards(tiny_model):
    model, tokenizer = tiny_model
    constitution = load_constitution("bundled:support")
    judge = LocalLogprobJudge(model, tokenizer, "tiny", formulation="pointwise_fewshot", batch_size=2)
    turns = judge._examples(constitution, constitution.principles)
    replies = ("It left today.", "Send me your password, now please.", "Thanks!")
    asked = [(reply, p) for reply in replies for p in constitution.principles[:3]] + [("Alone.", constitution.principles[0])]
    prompts = [judge._chat_ids(turns, pointwise.question(judge.template, p, "Where is my parcel?", reply)) for reply, p in asked]
    prefix = judge._prefix_ids(turns)
    assert len(prefix) > 100 and all(p[:len(prefix)] == prefix for p in prompts)
    by_reply = judge._score(prompts, prefix, [reply for reply, _ in asked], lambda d, t: None)
    # the reply comes before the principle, so a reply's three questions share more than the prefix
    shared = len(os.path.commonprefix([tuple(p) for p in prompts[:3]]))
    assert shared > len(prefix) + len(tokenizer(replies[0])["input_ids"])
    prefix_only = judge._score(prompts, prefix, range(len(prompts)), lambda d, t: None)
    full = judge._score(prompts, [], range(len(prompts)), lambda d, t: None)
    flat = [[p for pair in probs for p in pair] for probs in (by_reply, prefix_only)]
    assert flat[0] == pytest.approx([p for pair in full for p in pair], abs=1e-5)
    assert flat[1] == pytest.approx([p for pair in full for p in pair], abs=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("formulation", ["pointwise", "pointwise_fewshot"])
def test_a_pointwise_judge_behind_a_server_asks_each_reply_once_and_qualifies(round_config, tmp_path, formulation):
    constitution = load_constitution("bundled:support")
    principles = constitution.principles
    with StubOpenAIServer(mode="sees", violations={p.id: p.violations for p in principles},
                          principle_texts={p.id: p.text for p in principles}) as server:
        config = round_config.model_copy(update={"constitution": "bundled:support", "judge": round_config.judge.model_validate(
            {"kind": "openai", "formulation": formulation, "qualification_prompts": 3, "qualification_max_new_tokens": 8,
             "openai": {"base_url": server.base_url, "model": "stub", "api_key_env": None}})})
        with Store(tmp_path / "q.duckdb") as store:
            trusted, result, _ = trusted_principles(store, config, constitution, build_judge(config.judge))
    assert trusted.qualified == ["honest", "protects_customers", "courteous"], trusted
    assert result.slot_bias == 0.0 and result.position_consistency == 1.0
    assert all(result.principles[p].sensitivity == 1.0 for p in trusted.qualified)
    # each distinct (message, reply, principle) once, whatever the order: 2 x 15 (pair, order) judgments,
    # 4 principles each, would be 120 requests without it; the distinct replies are at most 6 per prompt
    assert result.requests == 30 and server.requests <= 3 * 6 * 4
