"""Evaluation as a stage: model A vs model B on held-out prompts (in a round, A = the candidate and
B = the current policy; `rlaif compare` takes any two stored models).

Both models answer every held-out prompt (and every probe prompt) k times
(`eval.samples_per_prompt`) with common random numbers: sample j of a prompt has the same seed on
both sides, so the two sides differ only where the models do. Each held-out prompt's sample j of A
is paired with its sample j of B, and every pair is judged in both orders by the constitution judge.

Reported, each with a 95% bootstrap interval over prompts (a prompt's k pairs are resampled
together): A's raw win rate, the length-controlled win rate the gate uses and the plain one
(evals/winrate.py), the paired difference of every principle's and probe's pass rate, and the
minimum detectable effect. The gate (evals/decision.py) promotes, calls A worse, or stays undecided;
with `eval.sequential` an undecided evaluation draws k more samples per prompt and looks again,
up to `eval.max_samples`, with intervals widened so all looks together keep the stated error rate.

Per-principle pass rate of a model: for a principle with an executable check, the share of its
answers that pass the check; for a judged principle, the share of pairs where the judge's vote on
that principle (both orders combined) did not go to the other model (a tie passes both; "n/a" votes
are left out).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
from pydantic import BaseModel, Field, model_validator

from constitution.loader import Constitution
from evals.decision import Decision, Look, explain, gate_verdict, significant_losses
from evals.probes import ProbeSet
from evals.winrate import JudgedPairs, mean_difference, score_of, win_rates
from judges.stage import PairwiseJudge, judge_pairs
from prompts.loader import Prompt
from sampling.sampler import Sampler, SamplingParams
from sampling.stage import pair_id, sample_for_round
from stats.intervals import Interval, critical_z
from stats.sequential import look_confidence, minimum_detectable, planned_looks
from store.db import Store
from store.ids import stable_int
from store.rows import CompletionRow, EvalRow, PairRow, PromptRow, VerdictRow

Progress = Callable[[int, int], None]
ProgressBar = Callable[[str], AbstractContextManager[Progress]]  # a bar for a named step (flows.progress.progress_bar)
# (first sample index, samples per prompt) -> (A's, B's) completions of those sample indices, every eval prompt
SampleMore = Callable[[int, int], tuple[list[CompletionRow], list[CompletionRow]]]


class EvalSettings(BaseModel):
    """How much an evaluation samples and how it decides (the config's `eval` section holds these)."""

    samples_per_prompt: int = Field(default=4, gt=0, description="k: answers per held-out prompt and side (per look)")
    sequential: bool = Field(default=False, description="an undecided evaluation draws k more samples per prompt and "
                                                        "looks again, up to max_samples (error rates kept over all looks)")
    max_samples: int = Field(default=12, gt=0, description="sequential: at most this many samples per prompt and side")
    margin: float = Field(default=0.0, gt=-0.5, lt=0.5, description="promote only if the interval's lower end clears 0.5 + "
                          "margin; a negative margin promotes a candidate unless it is worse by more than that (non-inferiority)")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="of every interval; (1 - confidence) / 2 is the chance "
                                                                      "of promoting a candidate that is no better")
    power: float = Field(default=0.8, gt=0.5, lt=1, description="for the minimum detectable effect shown with each evaluation")

    @model_validator(mode="after")
    def _max_covers_one_look(self) -> EvalSettings:
        if self.sequential and self.max_samples < self.samples_per_prompt:
            raise ValueError(f"eval.max_samples {self.max_samples} is below eval.samples_per_prompt {self.samples_per_prompt}")
        return self

    def looks(self) -> int:
        return planned_looks(self.samples_per_prompt, self.max_samples) if self.sequential else 1


class ModelStats(BaseModel):
    model_id: str
    mean_tokens: float
    median_tokens: float
    principle_pass: dict[str, float]  # principle id -> pass rate (see the module docstring)
    probe_pass: dict[str, float] = {}  # probe set name -> pass rate


class EvalOutcome(BaseModel):
    prompts: int               # held-out prompts with a valid verdict: the unit of every interval
    samples_per_prompt: int    # k, at the look that decided
    n: int                     # judged pairs with a valid verdict
    wins: int
    losses: int
    ties: int                  # ties, and pairs whose two orders disagree
    raw: Interval              # A's mean score: a tie is half a win
    lc: Interval               # length-controlled where length is free: what the gate decides on
    lc_plain: Interval         # every pair length-controlled (shown beside it)
    length_coef: float
    length_decided: float      # share of pairs a word limit of the constitution decides
    consistency: float         # share of verdicts whose two orders agree
    differences: dict[str, Interval] = {}  # principle id or "probe:NAME" -> pass rate of A minus B (paired)
    looks: list[Look] = []
    decision: Decision
    candidate: ModelStats      # A
    baseline: ModelStats       # B

    @model_validator(mode="before")
    @classmethod
    def _from_single_sample_evaluation(cls, data):
        """Rounds evaluated before intervals (one sample per prompt, a point-estimate bar) still read."""
        if isinstance(data, dict) and "raw" not in data and "win_rate" in data:
            unknown = {"low": 0.0, "high": 1.0, "se": float("nan")}
            data = dict(data, prompts=data["n"], samples_per_prompt=1,
                        raw={"estimate": data["win_rate"], "low": data["win_rate_low"], "high": data["win_rate_high"]},
                        lc={"estimate": data["lc_win_rate"], **unknown}, lc_plain={"estimate": data["lc_win_rate"], **unknown},
                        length_decided=0.0, decision={"verdict": "undecided", "reason": "evaluated before intervals existed"})
        return data

    @property
    def minimum_detectable(self) -> float | None:
        return self.looks[-1].minimum_detectable if self.looks else None


def eval_prompts(heldout: Sequence[Prompt], probes: Sequence[ProbeSet]) -> list[Prompt]:
    """Everything each model answers: the held-out prompts, then every probe set's prompts."""
    return list(heldout) + [p for probe in probes for p in probe.as_prompts()]


def sample_side(store: Store, sampler: Sampler, model_id: str, eval_id: str, prompts: Sequence[Prompt],
                system_prompt: str, params: SamplingParams, seed: int, first_sample: int, samples: int,
                progress: Progress = lambda d, t: None) -> list[CompletionRow]:
    """Samples first_sample .. first_sample + samples - 1 of every prompt from one model (stored; a rerun
    samples nothing again). Both sides of an evaluation pass the same seed: common random numbers."""
    store.append([PromptRow(prompt_id=p.prompt_id, text=p.text, source=p.source, tags=p.tags, split=p.split) for p in prompts])
    return sample_for_round(store, sampler, model_id, eval_id, prompts, system_prompt, params.model_copy(update={"n": samples}),
                            seed, "eval", progress, first_sample=first_sample)


def evaluate(
    store: Store,
    judge: PairwiseJudge,
    constitution: Constitution,
    eval_id: str,
    heldout: Sequence[Prompt],
    probes: Sequence[ProbeSet],
    sample_more: SampleMore,
    settings: EvalSettings,
    progress_bar: ProgressBar = lambda name: nullcontext(lambda done, total: None),
    uncounted: frozenset[str] = frozenset(),
) -> EvalOutcome:
    """Sample, judge and decide, look after look, until the gate decides or the planned looks are spent.

    `uncounted`: model-judged principles the judge did not qualify on (they decide no winner)."""
    k, looks = settings.samples_per_prompt, settings.looks()
    side_a: list[CompletionRow] = []
    side_b: list[CompletionRow] = []
    history: list[Look] = []
    for look in range(looks):
        more_a, more_b = sample_more(look * k, k)
        side_a, side_b = side_a + more_a, side_b + more_b
        with progress_bar("eval: judging" + (f" (look {look + 1}/{looks})" if looks > 1 else "")) as progress:
            outcome = score_head_to_head(store, judge, constitution, eval_id, heldout, probes, side_a, side_b, settings, looks,
                                         history, progress, uncounted)
        history = outcome.looks
        if outcome.decision.verdict != "undecided":
            break
    store.replace([EvalRow(round_id=eval_id, candidate_id=outcome.candidate.model_id, baseline_id=outcome.baseline.model_id,
                           metric=name, value=float(value), n=outcome.n) for name, value in eval_metrics(outcome).items()])
    return outcome


def score_head_to_head(
    store: Store,
    judge: PairwiseJudge,
    constitution: Constitution,
    eval_id: str,
    heldout: Sequence[Prompt],
    probes: Sequence[ProbeSet],
    side_a: Sequence[CompletionRow],
    side_b: Sequence[CompletionRow],
    settings: EvalSettings,
    looks: int = 1,
    history: Sequence[Look] = (),
    progress: Progress = lambda done, total: None,
    uncounted: frozenset[str] = frozenset(),
) -> EvalOutcome:
    """Pair the two sides' held-out answers per (prompt, sample index), judge them in both orders,
    and score this look: win rates and pass-rate differences with intervals, and the gate's verdict."""
    a_of = {(c.prompt_id, c.sample_index): c for c in side_a}
    b_of = {(c.prompt_id, c.sample_index): c for c in side_b}
    heldout_ids = {p.prompt_id for p in heldout}
    matched = sorted(key for key in a_of.keys() & b_of.keys() if key[0] in heldout_ids)
    pairs = [PairRow(pair_id=pair_id(eval_id, a_of[key].completion_id, b_of[key].completion_id), round_id=eval_id,
                     prompt_id=key[0], purpose="eval", completion_a=a_of[key].completion_id,
                     completion_b=b_of[key].completion_id) for key in matched]
    store.append(pairs)
    verdicts = judge_pairs(store, judge, constitution, pairs, progress, uncounted)
    ok = [(key, verdicts[p.pair_id]) for key, p in zip(matched, pairs) if verdicts[p.pair_id].status == "ok"]

    messages = {p.prompt_id: p.text for p in heldout} | {p.prompt_id: p.text for probe in probes for p in probe.as_prompts()}
    prompt_index = {pid: i for i, pid in enumerate(sorted({key[0] for key, _ in ok}))}
    clusters = len(prompt_index)
    confidence = look_confidence(settings.confidence, looks)
    seed = stable_int("bootstrap", eval_id, len(history)) % 2**32
    judged = JudgedPairs(
        prompt=np.array([prompt_index[key[0]] for key, _ in ok], dtype=np.int64),
        score=np.array([score_of(v.winner) for _, v in ok]),
        length_diff=np.array([a_of[key].completion_tokens - b_of[key].completion_tokens for key, _ in ok], dtype=np.float64),
        length_decided=np.array([_length_decided(constitution, a_of[key].text, b_of[key].text) for key, _ in ok], dtype=bool),
    )
    rates = win_rates(judged, clusters, confidence, seed)
    differences = _principle_differences(constitution, ok, a_of, b_of, messages, prompt_index, confidence, seed)
    differences |= _probe_differences(probes, a_of, b_of, confidence, seed)

    k = len({key[1] for key in matched})  # samples per prompt (the sample indices may start anywhere)
    critical = critical_z(confidence, clusters)
    vetoes = significant_losses({name: d for name, d in differences.items() if _is_check(constitution, name)})
    look = Look(samples_per_prompt=k, pairs=len(ok), confidence=confidence, lc=rates.lc,
                minimum_detectable=minimum_detectable(rates.lc.se, critical, settings.power, 0.5 + settings.margin),
                verdict=gate_verdict(rates.lc, settings.margin, vetoes))
    decision = Decision(verdict=look.verdict, reason=explain(look, settings.margin, clusters, rates.raw, vetoes), vetoes=vetoes)

    heldout_a = [a_of[key] for key in matched]
    heldout_b = [b_of[key] for key in matched]
    ok_verdicts = [v for _, v in ok]
    return EvalOutcome(
        prompts=clusters, samples_per_prompt=k, n=len(ok), wins=sum(v.winner == "a" for v in ok_verdicts),
        losses=sum(v.winner == "b" for v in ok_verdicts), ties=sum(v.winner not in ("a", "b") for v in ok_verdicts),
        raw=rates.raw, lc=rates.lc, lc_plain=rates.lc_plain, length_coef=rates.length_coef,
        length_decided=rates.length_decided,
        consistency=sum(v.consistent for v in ok_verdicts) / len(ok_verdicts) if ok_verdicts else 0.0,
        differences=differences, looks=[*history, look], decision=decision,
        candidate=_model_stats(side_a[0].model_id, heldout_a, "a", ok_verdicts, constitution, probes, side_a, messages),
        baseline=_model_stats(side_b[0].model_id, heldout_b, "b", ok_verdicts, constitution, probes, side_b, messages),
    )


def _length_decided(constitution: Constitution, text_a: str, text_b: str) -> bool:
    """Whether some word limit of the constitution holds for one reply and not the other."""
    return any(p.check.over_word_limit(text_a) != p.check.over_word_limit(text_b)
               for p in constitution.principles if p.check is not None and p.check.max_words is not None)


def _is_check(constitution: Constitution, name: str) -> bool:
    """Executable checks (constitution checks and probe sets) can veto a promotion; judged principles cannot."""
    return name.startswith("probe:") or any(p.id == name and p.check is not None for p in constitution.principles)


def _principle_differences(constitution: Constitution, ok: Sequence[tuple[tuple[str, int], VerdictRow]],
                           a_of: dict, b_of: dict, messages: dict[str, str], prompt_index: dict[str, int],
                           confidence: float, seed: int) -> dict[str, Interval]:
    """Per principle: pass rate of A minus pass rate of B over the matched held-out pairs, with its interval."""
    differences = {}
    for principle in constitution.principles:
        values, prompts = [], []
        for key, verdict in ok:
            if principle.check is not None:
                message = messages[key[0]]
                value = (int(not principle.check.failures(a_of[key].text, message))
                         - int(not principle.check.failures(b_of[key].text, message)))
            else:
                vote = verdict.votes_json.get(principle.id)
                if vote not in ("a", "b", "tie"):
                    continue
                value = {"a": 1, "b": -1, "tie": 0}[vote]
            values.append(value)
            prompts.append(prompt_index[key[0]])
        if values:
            differences[principle.id] = mean_difference(np.array(values, dtype=np.float64), np.array(prompts),
                                                        len(prompt_index), confidence, seed)
    return differences


def _probe_differences(probes: Sequence[ProbeSet], a_of: dict, b_of: dict, confidence: float, seed: int) -> dict[str, Interval]:
    """Per probe set: pass rate of A minus pass rate of B over its prompts' matched samples, with its interval."""
    differences = {}
    for probe in probes:
        ids = {p.prompt_id: i for i, p in enumerate(probe.as_prompts())}
        keys = sorted(key for key in a_of.keys() & b_of.keys() if key[0] in ids)
        if keys:
            values = np.array([int(probe.passes(a_of[key].text)) - int(probe.passes(b_of[key].text)) for key in keys], dtype=np.float64)
            differences[f"probe:{probe.name}"] = mean_difference(values, np.array([ids[key[0]] for key in keys]), len(ids),
                                                                 confidence, seed)
    return differences


def _model_stats(model_id: str, answers: Sequence[CompletionRow], side: str, verdicts: Sequence[VerdictRow],
                 constitution: Constitution, probes: Sequence[ProbeSet], every_answer: Sequence[CompletionRow],
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
        ids = {p.prompt_id for p in probe.as_prompts()}
        texts = [c.text for c in every_answer if c.prompt_id in ids]
        if texts:
            probe_pass[probe.name] = sum(probe.passes(t) for t in texts) / len(texts)
    lengths = [c.completion_tokens for c in answers]
    return ModelStats(model_id=model_id, mean_tokens=statistics.fmean(lengths) if lengths else 0.0,
                      median_tokens=statistics.median(lengths) if lengths else 0.0,
                      principle_pass=principle_pass, probe_pass=probe_pass)


def eval_metrics(outcome: EvalOutcome) -> dict[str, float]:
    """The outcome as flat `evals` rows: metric name -> value."""
    metrics: dict[str, float] = {"prompts": outcome.prompts, "samples_per_prompt": outcome.samples_per_prompt,
                                 "wins": outcome.wins, "losses": outcome.losses, "ties": outcome.ties,
                                 "length_coef": outcome.length_coef, "length_decided": outcome.length_decided,
                                 "judge_consistency": outcome.consistency, "looks": len(outcome.looks),
                                 "promoted": float(outcome.decision.verdict == "promote")}
    for name, interval in (("win_rate", outcome.raw), ("lc_win_rate", outcome.lc), ("lc_plain", outcome.lc_plain)):
        metrics |= {name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high}
    if outcome.minimum_detectable is not None:
        metrics["minimum_detectable"] = outcome.minimum_detectable
    for role, stats in (("candidate", outcome.candidate), ("baseline", outcome.baseline)):
        metrics[f"{role}_mean_tokens"] = stats.mean_tokens
        metrics[f"{role}_median_tokens"] = stats.median_tokens
        metrics.update({f"pass:{pid}:{role}": rate for pid, rate in stats.principle_pass.items()})
        metrics.update({f"probe:{name}:{role}": rate for name, rate in stats.probe_pass.items()})
    for name, diff in outcome.differences.items():
        metrics |= {f"diff:{name}": diff.estimate, f"diff:{name}_low": diff.low, f"diff:{name}_high": diff.high}
    return metrics
