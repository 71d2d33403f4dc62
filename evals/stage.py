"""Evaluation as a stage: model A vs model B on held-out prompts (in a round, A = the candidate and
B = the current policy; `rlaif compare` takes any two stored models).

Both models answer each held-out prompt (and each probe prompt) once with the same seed (common
random numbers). Each held-out pair (a = A, b = B) is judged in both orders by the constitution
judge. Reported: the raw win rate of A with a Wilson interval, the length-controlled win rate
(evals/winrate.py), per-principle pass rates of each model, completion lengths, probe pass rates.

Per-principle pass rate of a model: for a principle with an executable check, the share of its
answers that pass the check; for a judged principle, the share of pairs where the judge's vote on
that principle (both orders combined) did not go to the other model (a tie passes both; "n/a" votes
are left out).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from pydantic import BaseModel

from constitution.loader import Constitution
from evals.probes import ProbeSet
from evals.winrate import length_controlled_win_rate, score_of, wilson_interval
from judges.stage import PairwiseJudge, judge_pairs
from prompts.loader import Prompt
from sampling.sampler import Sampler, SamplingParams
from sampling.stage import pair_id, sample_for_round
from store.db import Store
from store.rows import CompletionRow, EvalRow, PairRow, PromptRow, VerdictRow

Progress = Callable[[int, int], None]


class ModelStats(BaseModel):
    model_id: str
    mean_tokens: float
    median_tokens: float
    principle_pass: dict[str, float]  # principle id -> pass rate (see the module docstring)
    probe_pass: dict[str, float] = {}  # probe set name -> pass rate


class EvalOutcome(BaseModel):
    n: int              # held-out pairs with a valid verdict
    wins: int
    losses: int
    ties: int
    win_rate: float     # A's mean score: a tie (or orders that disagree) is half a win
    win_rate_low: float  # 95% Wilson interval
    win_rate_high: float
    lc_win_rate: float  # length-controlled: the logistic length model read at zero length difference
    length_coef: float
    consistency: float  # share of verdicts whose two orders agree
    candidate: ModelStats  # A
    baseline: ModelStats   # B


def eval_prompts(heldout: Sequence[Prompt], probes: Sequence[ProbeSet]) -> list[Prompt]:
    """Everything each model answers: the held-out prompts, then every probe set's prompts."""
    return list(heldout) + [p for probe in probes for p in probe.as_prompts()]


def sample_side(store: Store, sampler: Sampler, model_id: str, eval_id: str, prompts: Sequence[Prompt],
                system_prompt: str, params: SamplingParams, seed: int, progress: Progress = lambda d, t: None
                ) -> list[CompletionRow]:
    """One completion per prompt from one model (stored; a rerun samples nothing again)."""
    store.append([PromptRow(prompt_id=p.prompt_id, text=p.text, source=p.source, tags=p.tags, split=p.split) for p in prompts])
    return sample_for_round(store, sampler, model_id, eval_id, prompts, system_prompt, params.model_copy(update={"n": 1}),
                            seed, "eval", progress)


def score_head_to_head(
    store: Store,
    judge: PairwiseJudge,
    constitution: Constitution,
    eval_id: str,
    heldout: Sequence[Prompt],
    probes: Sequence[ProbeSet],
    side_a: Sequence[CompletionRow],
    side_b: Sequence[CompletionRow],
    progress: Progress = lambda done, total: None,
    uncounted: frozenset[str] = frozenset(),
) -> EvalOutcome:
    """Pair the two sides' held-out answers, judge them in both orders, store and return the metrics.

    `uncounted`: model-judged principles the judge did not qualify on (they decide no winner)."""
    a_by_prompt = {c.prompt_id: c for c in side_a}
    b_by_prompt = {c.prompt_id: c for c in side_b}
    a_id, b_id = side_a[0].model_id, side_b[0].model_id
    pairs = [PairRow(pair_id=pair_id(eval_id, a_by_prompt[p.prompt_id].completion_id, b_by_prompt[p.prompt_id].completion_id),
                     round_id=eval_id, prompt_id=p.prompt_id, purpose="eval",
                     completion_a=a_by_prompt[p.prompt_id].completion_id, completion_b=b_by_prompt[p.prompt_id].completion_id)
             for p in heldout]
    store.append(pairs)
    verdicts = judge_pairs(store, judge, constitution, pairs, progress, uncounted)
    ok = [(p, verdicts[p.pair_id]) for p in pairs if verdicts[p.pair_id].status == "ok"]
    scores = [score_of(v.winner) for _, v in ok]
    length_diffs = [a_by_prompt[p.prompt_id].completion_tokens - b_by_prompt[p.prompt_id].completion_tokens for p, _ in ok]
    rate = sum(scores) / len(scores) if scores else 0.0
    low, high = wilson_interval(rate, len(scores))
    lc = length_controlled_win_rate(scores, length_diffs)
    messages = {p.prompt_id: p.text for p in heldout}
    heldout_a = [a_by_prompt[p.prompt_id] for p in heldout]
    heldout_b = [b_by_prompt[p.prompt_id] for p in heldout]
    outcome = EvalOutcome(
        n=len(ok), wins=sum(v.winner == "a" for _, v in ok), losses=sum(v.winner == "b" for _, v in ok),
        ties=sum(score == 0.5 for score in scores), win_rate=rate, win_rate_low=low, win_rate_high=high,
        lc_win_rate=lc.lc_win_rate, length_coef=lc.length_coef,
        consistency=sum(v.consistent for _, v in ok) / len(ok) if ok else 0.0,
        candidate=_model_stats(a_id, heldout_a, "a", [v for _, v in ok], constitution, probes, a_by_prompt, messages),
        baseline=_model_stats(b_id, heldout_b, "b", [v for _, v in ok], constitution, probes, b_by_prompt, messages),
    )
    store.append([EvalRow(round_id=eval_id, candidate_id=a_id, baseline_id=b_id, metric=name, value=float(value), n=outcome.n)
                  for name, value in eval_metrics(outcome).items()])
    return outcome


def _model_stats(model_id: str, answers: Sequence[CompletionRow], side: str, verdicts: Sequence[VerdictRow],
                 constitution: Constitution, probes: Sequence[ProbeSet], by_prompt: dict[str, CompletionRow],
                 messages: dict[str, str]) -> ModelStats:
    other = "b" if side == "a" else "a"
    principle_pass = {}
    for principle in constitution.principles:
        if principle.check is not None:
            passed = [not principle.check.failures(c.text, messages[c.prompt_id]) for c in answers]
        else:
            votes = [v.votes_json.get(principle.id) for v in verdicts]
            passed = [vote != other for vote in votes if vote in ("a", "b", "tie")]
        if passed:
            principle_pass[principle.id] = sum(passed) / len(passed)
    probe_pass = {}
    for probe in probes:
        texts = [by_prompt[p.prompt_id].text for p in probe.as_prompts()]
        probe_pass[probe.name] = sum(probe.passes(t) for t in texts) / len(texts)
    lengths = [c.completion_tokens for c in answers]
    return ModelStats(model_id=model_id, mean_tokens=statistics.fmean(lengths) if lengths else 0.0,
                      median_tokens=statistics.median(lengths) if lengths else 0.0,
                      principle_pass=principle_pass, probe_pass=probe_pass)


def eval_metrics(outcome: EvalOutcome) -> dict[str, float]:
    """The outcome as flat `evals` rows: metric name -> value."""
    metrics = {k: getattr(outcome, k) for k in ("win_rate", "win_rate_low", "win_rate_high", "lc_win_rate", "length_coef",
                                                "wins", "losses", "ties")}
    metrics["judge_consistency"] = outcome.consistency
    for role, stats in (("candidate", outcome.candidate), ("baseline", outcome.baseline)):
        metrics[f"{role}_mean_tokens"] = stats.mean_tokens
        metrics[f"{role}_median_tokens"] = stats.median_tokens
        metrics.update({f"pass:{pid}:{role}": rate for pid, rate in stats.principle_pass.items()})
        metrics.update({f"probe:{name}:{role}": rate for name, rate in stats.probe_pass.items()})
    return metrics
