"""Judging: both orders combined, invalid never counted, the cache pays once, rationales stored."""

from __future__ import annotations

import pytest

from constitution.loader import load_constitution
from judges.local_logprob import LocalLogprobJudge
from judges.stage import judge_pairs
from judges.verdict import OrderJudgment, PrincipleVote, combine_orders
from store.db import Store
from store.rows import JudgmentRow

from helpers import seed_pairs


def order(o: str, winner: str | None, score: float | None, status: str = "ok") -> OrderJudgment:
    votes = {} if winner is None else {"p": PrincipleVote(vote=winner, score=score, source="model")}
    return OrderJudgment(order=o, parse_status=status, winner=winner, score=score, votes=votes, rationale=f"{o} says {winner}")


def test_orders_that_agree_give_a_confident_winner():
    v = combine_orders(order("ab", "a", 0.6), order("ba", "a", 0.2))
    assert (v.winner, v.consistent, v.status) == ("a", True, "ok")
    assert v.confidence == pytest.approx(0.2) and v.score == pytest.approx(0.4)
    assert "ab says a" in v.rationale and "ba says a" in v.rationale


def test_orders_that_disagree_are_a_zero_confidence_tie():
    # the classic position bias: the judge picks slot A both times, i.e. a then b
    v = combine_orders(order("ab", "a", 0.3), order("ba", "b", -0.3))
    assert (v.winner, v.consistent, v.confidence) == ("tie", False, 0.0)


@pytest.mark.parametrize("bad", ["invalid", "error"])
def test_an_invalid_order_is_never_a_preference(bad):
    v = combine_orders(order("ab", "a", 0.9), order("ba", None, None, status=bad))
    assert v.status == bad and v.winner is None and not v.consistent


class CountingJudge(LocalLogprobJudge):
    """The real local judge, counting how many (pair, order) items it was asked to judge."""

    calls = 0

    def judge(self, items, constitution, progress=lambda d, t: None):
        CountingJudge.calls += len(items)
        return super().judge(items, constitution, progress)


def test_judging_twice_makes_zero_new_judge_calls(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    constitution = load_constitution("bundled:support")
    judge = CountingJudge(model, tokenizer, "tiny", batch_size=4)
    with Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Where is order {i}?", f"It ships tomorrow, order {i}.", f"Best regards, [Your Name] {i}") for i in range(3)])
        CountingJudge.calls = 0
        first = judge_pairs(store, judge, constitution, pairs)
        assert CountingJudge.calls == 6                      # 3 pairs x 2 orders
        rows = store.count_rows()
        assert rows["judgments"] == 6 and rows["verdicts"] == 3
        second = judge_pairs(store, judge, constitution, pairs)
        assert CountingJudge.calls == 6                      # all from the cache
        assert store.count_rows() == rows
        assert first == second
        # every judgment records the constitution version and a rationale naming the principles
        for j in store.by_ids(JudgmentRow, [v.judgment_ab for v in first.values()]).values():
            assert j.constitution_hash == constitution.content_hash
            assert "no_placeholders" in j.rationale and j.parse_status == "ok"
            assert set(j.votes_json) == {p.id for p in constitution.principles}
        # the placeholder check decides deterministically in both orders
        assert all(v.votes_json["no_placeholders"] == "a" for v in first.values())


def test_a_local_judges_id_tells_apart_two_models_in_folders_of_one_name(tiny_model_dir, tmp_path):
    """Cached verdicts are keyed by the judge's id: two fine-tunes saved as `final/` must not share
    them, and the same weights moved elsewhere must keep theirs."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from judges.config import JudgeConfig, build_judge

    first, moved, tuned = (tmp_path / run / "final" for run in ("first", "moved", "tuned"))
    for copy in (first, moved, tuned):
        shutil.copytree(tiny_model_dir, copy)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # like a merged LoRA: one projection changed, same shapes, config and sizes
        model.model.layers[1].self_attn.v_proj.weight.add_(0.01)
    model.save_pretrained(tuned)
    shutil.copy(tiny_model_dir / "config.json", tuned / "config.json")
    ids = {path.parent.name: build_judge(JudgeConfig(model_path=str(path))).judge_id for path in (first, moved, tuned)}
    assert ids["first"] == ids["moved"] != ids["tuned"]
    assert ids["first"].startswith("local_logprob:final@")
