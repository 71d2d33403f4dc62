"""The promotion gate end to end: scripted judges through the real evaluation and the real round flow.

A coin-flip judge (it cannot tell the two models apart) must promote at most at the stated rate;
a judge that always prefers the candidate must promote, one that always prefers the current policy
must call the candidate worse, and an undecided evaluation must keep the policy and say why.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from scripted_judges import ScriptedJudge, always, coin_flip

from constitution.loader import load_constitution
from evals.stage import EvalSettings, evaluate
from prompts.loader import Prompt, select_heldout_prompts
from sampling.stage import completion_id
from store.db import Store
from store.rows import CompletionRow, PromptRow

JUDGED_ONLY = """
name: scripted
principles:
  - id: helpful
    text: The reply helps the customer.
"""


def scripted_answers(store: Store, eval_id: str, prompts: list[Prompt], seed: int):
    """`sample_more` for an evaluation without a model: both sides answer with replies of random length."""
    store.append([PromptRow(prompt_id=p.prompt_id, text=p.text, source=p.source, tags=p.tags, split=p.split) for p in prompts])
    rng = np.random.default_rng(seed)

    def sample_more(first: int, k: int):
        sides = []
        for model_id in ("candidate", "policy"):
            rows = []
            for p in prompts:
                for s in range(first, first + k):
                    words = int(rng.integers(5, 60))
                    rows.append(CompletionRow(
                        completion_id=completion_id(eval_id, p.prompt_id, model_id, s, seed, "eval"), round_id=eval_id,
                        prompt_id=p.prompt_id, model_id=model_id, purpose="eval", sample_index=s, seed=seed,
                        text=" ".join(["word"] * words) + f" ({model_id} {s} {seed})", token_ids=[1] * words, prompt_tokens=10,
                        completion_tokens=words, finish_reason="stop", sum_logprob=-1.0, sampling_json={}))
            store.append(rows)
            sides.append(rows)
        return sides[0], sides[1]

    return sample_more


def test_a_coin_flip_judge_promotes_at_most_at_the_stated_rate(tmp_path):
    (tmp_path / "c.yaml").write_text(JUDGED_ONLY)
    constitution = load_constitution(str(tmp_path / "c.yaml"))
    heldout = [Prompt(text=f"question {i}", split="heldout", source="t") for i in range(8)]
    settings = EvalSettings(samples_per_prompt=4)
    evaluations = 200
    verdicts: Counter[str] = Counter()
    with Store(tmp_path / "aa.duckdb") as store:
        for seed in range(evaluations):
            eval_id = f"aa-{seed}"
            outcome = evaluate(store, ScriptedJudge("coin", coin_flip(seed)), constitution, eval_id, heldout, [],
                               scripted_answers(store, eval_id, heldout, seed), settings)
            assert outcome.prompts == 8 and outcome.samples_per_prompt == 4 and outcome.n == 32
            verdicts[outcome.decision.verdict] += 1
    # the stated rate: (1 - 0.95) / 2 = 2.5% each way; 200 evaluations make 10 (5%) a generous ceiling
    assert verdicts["promote"] <= 10 and verdicts["worse"] <= 10, verdicts
    assert verdicts["undecided"] >= 180


def test_sequential_looks_draw_more_samples_until_the_planned_maximum(tmp_path):
    (tmp_path / "c.yaml").write_text(JUDGED_ONLY)
    constitution = load_constitution(str(tmp_path / "c.yaml"))
    heldout = [Prompt(text=f"question {i}", split="heldout", source="t") for i in range(6)]
    settings = EvalSettings(samples_per_prompt=2, sequential=True, max_samples=6)
    with Store(tmp_path / "seq.duckdb") as store:
        undecided = evaluate(store, ScriptedJudge("tie", always("tie")), constitution, "seq-1", heldout, [],
                             scripted_answers(store, "seq-1", heldout, 1), settings)
        assert [look.samples_per_prompt for look in undecided.looks] == [2, 4, 6] and undecided.n == 36
        assert all(look.confidence == pytest.approx(1 - 0.05 / 3) for look in undecided.looks)
        assert undecided.decision.verdict == "undecided"
        decided = evaluate(store, ScriptedJudge("a", always("a")), constitution, "seq-2", heldout, [],
                           scripted_answers(store, "seq-2", heldout, 2), settings)
        assert [look.samples_per_prompt for look in decided.looks] == [2] and decided.decision.verdict == "promote"
        assert store.count_rows()["pairs"] == 36 + 12  # the decided evaluation stopped after its first look


@pytest.fixture()
def scripted_round(round_config, monkeypatch, tmp_path):
    """The tiny-model round with a judged-only constitution, no qualification, and a judge the test scripts."""
    (tmp_path / "scripted.yaml").write_text(JUDGED_ONLY)
    config = round_config.model_copy(update={
        "constitution": str(tmp_path / "scripted.yaml"),
        "judge": round_config.judge.model_copy(update={"qualify": False}),
        "eval": round_config.eval.model_copy(update={"margin": 0.0, "samples_per_prompt": 4}),
    })

    def use(judge: ScriptedJudge):
        monkeypatch.setattr("flows.stages.build_judge", lambda judge_config: judge)
        return config

    return use


def test_a_judge_that_always_prefers_the_candidate_promotes_it(prefect_harness, scripted_round):
    from flows.round import rlaif_round

    summary = rlaif_round(config=scripted_round(ScriptedJudge("candidate", always("a"))))
    assert summary.train.trained and summary.eval is not None
    assert summary.eval.raw.estimate == 1.0 and summary.eval.lc.low > 0.5
    assert summary.eval.decision.verdict == "promote" and summary.promoted
    assert summary.decision.startswith("promoted: length-controlled win rate")
    assert "3 prompts x 4 samples" in summary.decision


def test_a_judge_that_always_prefers_the_current_policy_calls_the_candidate_worse(prefect_harness, scripted_round):
    from flows.round import rlaif_round

    config = scripted_round(ScriptedJudge("policy", always("b")))
    summary = rlaif_round(config=config)
    assert summary.eval is not None and summary.eval.raw.estimate == 0.0 and summary.eval.lc.high < 0.5
    assert summary.eval.decision.verdict == "worse" and not summary.promoted
    assert summary.decision.startswith("not promoted, the candidate is worse")
    with Store(config.store, read_only=True) as store:
        assert store.current_policy().model_id == summary.policy_id


def test_an_undecided_evaluation_keeps_the_policy_and_says_why(prefect_harness, scripted_round, round_config):
    from flows.round import rlaif_round

    heldout = {p.text for p in select_heldout_prompts(
        [Prompt(text=p.text, tags=p.tags, split=p.split, source=p.source) for p in _bundled()], round_config.prompts.heldout,
        round_config.seed)}
    coin = coin_flip(0)
    # trains on sample 0 of every train prompt; cannot tell the two models apart on the held-out prompts
    judge = ScriptedJudge("undecided", lambda pair: coin(pair) if pair.prompt in heldout else "a")
    config = scripted_round(judge)
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"samples_per_prompt": 2, "sequential": True,
                                                                               "max_samples": 4})})
    logged = _Lines()
    logging.getLogger("prefect").addHandler(logged)
    try:
        first = rlaif_round(config=config)
    finally:
        logging.getLogger("prefect").removeHandler(logged)
    assert first.train.trained and first.eval is not None
    assert first.eval.decision.verdict == "undecided" and not first.promoted
    assert [look.samples_per_prompt for look in first.eval.looks] == [2, 4]  # looked twice, then the planned maximum
    assert first.decision.startswith("undecided, the current policy stays")
    assert "cannot tell the two apart" in first.decision and "would detect a true rate of" in first.decision
    assert any("evaluation: undecided, the current policy stays" in line for line in logged.lines)
    second = rlaif_round(config=config)
    assert second.policy_id == first.policy_id  # the next round samples the old policy


def _bundled():
    from prompts.loader import load_prompts

    return load_prompts("bundled:support")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())
