"""training.mix_rounds: earlier finished rounds' trustworthy pairs join a round's training data."""

from __future__ import annotations

import pytest

from store.db import Store
from store.rows import CompletionRow, PairRow, PromptRow, RoundRow, VerdictRow
from training.data import earlier_preferences
from training.pairs import PreferencePair
from training.trainer import DPOParams, plan_steps


def finished_round(store: Store, index: int) -> None:
    """A finished round whose one pair the judge decided (a over b) in both orders."""
    round_id = f"round-{index:04d}"
    store.append([PromptRow(prompt_id=f"p{index}", text=f"Question {index}", source="t", tags=[], split="train")])
    store.append([CompletionRow(completion_id=f"c{index}-{s}", round_id=round_id, prompt_id=f"p{index}", model_id="m",
                                purpose="train", sample_index=s, seed=0, text=text, token_ids=[1, 2], prompt_tokens=3,
                                completion_tokens=2, finish_reason="stop", sum_logprob=-1.0, sampling_json={})
                  for s, text in enumerate([f"Good answer {index}.", f"Bad answer {index}."])])
    store.append([PairRow(pair_id=f"pair{index}", round_id=round_id, prompt_id=f"p{index}", purpose="train",
                          completion_a=f"c{index}-0", completion_b=f"c{index}-1")])
    store.append([RoundRow(round_id=round_id, round_index=index, status="finished", policy_id="m", constitution_hash="c",
                           seed=0, config_json={}, judge_id="j")])
    store.append([VerdictRow(pair_id=f"pair{index}", judge_id="j", constitution_hash="c", status="ok", winner="a",
                             consistent=True, confidence=0.8, score=0.8, votes_json={}, rationale="a in both orders",
                             judgment_ab="x", judgment_ba="y")])


@pytest.mark.parametrize("mix_rounds, expected", [(0, []), (1, ["Question 2"]), (2, ["Question 1", "Question 2"]),
                                                  (3, ["Question 1", "Question 2"])])
def test_mix_rounds_takes_the_last_n_finished_rounds(tmp_path, mix_rounds, expected):
    """With 2 finished rounds, mix_rounds=3 takes both (it once took only the last)."""
    with Store(tmp_path / "m.duckdb") as store:
        for index in (1, 2):
            finished_round(store, index)
        records = earlier_preferences(store, 3, mix_rounds)
    assert sorted(r.prompt for r in records) == expected
    assert all(r.chosen_text.startswith("Good") for r in records)
    assert all(r.chosen_logp is None and r.rejected_logp is None for r in records)  # reference recomputed


def test_plan_steps_covers_every_pair_once_per_epoch_in_a_fixed_order():
    pairs = [PreferencePair(pair_id=f"p{i}", prompt_ids=[1] * (i % 3 + 1), chosen_ids=[2] * (i + 1), rejected_ids=[3])
             for i in range(7)]
    params = DPOParams(batch_size=2, epochs=2)
    steps = plan_steps(pairs, params, seed=5)
    assert steps == plan_steps(pairs, params, seed=5)                  # fixed up front: a resumed run takes the same
    assert len(steps) == 8 and all(1 <= len(s) <= 2 for s in steps)  # ceil(7 / 2) steps per epoch
    first_epoch = sorted(i for s in steps[:4] for i in s)
    assert first_epoch == list(range(7))
