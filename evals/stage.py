"""Evaluation as a round stage: candidate vs the current policy on held-out prompts.

Both models answer each held-out prompt once with the same seed (common random numbers), the pair
(a = candidate, b = baseline) is judged in both orders by the round's judge, and the candidate's
win rate counts a tie (including orders that disagree) as half a win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from peft import PeftModel
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from constitution.loader import Constitution
from judges.stage import PairwiseJudge, judge_pairs
from prompts.loader import Prompt
from sampling.sampler import SamplingParams, TransformersSampler
from sampling.stage import pair_id, sample_for_round
from store.db import Store
from store.rows import CompletionRow, EvalRow, PairRow

Progress = Callable[[int, int], None]


class EvalOutcome(BaseModel):
    n: int
    wins: int
    losses: int
    ties: int
    win_rate: float
    consistency: float
    candidate_mean_tokens: float
    baseline_mean_tokens: float


def win_rate(wins: int, ties: int, n: int) -> float:
    return (wins + 0.5 * ties) / n if n else 0.0


def sample_head_to_head(
    store: Store,
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    round_id: str,
    candidate_id: str,
    baseline_id: str,
    heldout: Sequence[Prompt],
    system_prompt: str,
    params: SamplingParams,
    seed: int,
    progress: Progress = lambda done, total: None,
) -> list[PairRow]:
    """One completion per held-out prompt from each model; pairs are (a = candidate, b = baseline)."""
    one = params.model_copy(update={"n": 1})
    n = len(heldout)
    sampler = TransformersSampler(model, tokenizer)
    candidate = sample_for_round(store, sampler, candidate_id, round_id, heldout, system_prompt, one, seed,
                                 "eval", lambda done, total: progress(done, 2 * n))
    with model.disable_adapter():  # the baseline is the current policy: the same weights without the adapter
        baseline = sample_for_round(store, sampler, baseline_id, round_id, heldout, system_prompt, one, seed,
                                    "eval", lambda done, total: progress(n + done, 2 * n))
    pairs = [
        PairRow(pair_id=pair_id(round_id, c.completion_id, b.completion_id), round_id=round_id, prompt_id=c.prompt_id,
                purpose="eval", completion_a=c.completion_id, completion_b=b.completion_id)
        for c, b in zip(candidate, baseline)
    ]
    store.append(pairs)
    return pairs


def score_head_to_head(
    store: Store,
    judge: PairwiseJudge,
    constitution: Constitution,
    round_id: str,
    candidate_id: str,
    baseline_id: str,
    pairs: Sequence[PairRow],
    progress: Progress = lambda done, total: None,
) -> EvalOutcome:
    """Judge the head-to-head pairs in both orders; store and return the candidate's win rate."""
    verdicts = judge_pairs(store, judge, constitution, pairs, progress)
    completions = store.by_ids(CompletionRow, [c for p in pairs for c in (p.completion_a, p.completion_b)])
    ok = [v for v in verdicts.values() if v.status == "ok"]
    wins = sum(v.winner == "a" for v in ok)
    losses = sum(v.winner == "b" for v in ok)
    ties = sum(v.winner == "tie" for v in ok)
    outcome = EvalOutcome(
        n=len(ok), wins=wins, losses=losses, ties=ties, win_rate=win_rate(wins, ties, len(ok)),
        consistency=sum(v.consistent for v in ok) / len(ok) if ok else 0.0,
        candidate_mean_tokens=sum(completions[p.completion_a].completion_tokens for p in pairs) / len(pairs),
        baseline_mean_tokens=sum(completions[p.completion_b].completion_tokens for p in pairs) / len(pairs),
    )
    metrics = {"win_rate": outcome.win_rate, "wins": wins, "losses": losses, "ties": ties,
               "judge_consistency": outcome.consistency, "candidate_mean_tokens": outcome.candidate_mean_tokens,
               "baseline_mean_tokens": outcome.baseline_mean_tokens}
    store.append([EvalRow(round_id=round_id, candidate_id=candidate_id, baseline_id=baseline_id, metric=k,
                          value=float(v), n=outcome.n) for k, v in metrics.items()])
    return outcome
