"""What a round's report shows, gathered from the store (read-only) into plain pydantic models."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from evals.corrected import corrected_pass_rates
from evals.stage import EvalOutcome
from judges.qualification import QualificationGate, QualificationResult
from judges.stats import judge_stats
from review.agreement import labelled_votes
from review.gold import teaching_pairs
from stats.agreement import LabelAgreement, label_agreement
from stats.intervals import Interval
from store.db import Store, StoreError
from store.ids import stable_int
from store.rows import ModelRow, RoundRow, Stage, StepMetrics
from training.candidate import TrainOutcome
from training.data import round_preferences

M = TypeVar("M", bound=BaseModel)


class RoundPoint(BaseModel):
    """One round on the across-rounds plots (None where the round has no such number)."""

    round_index: int
    status: str
    promoted: bool
    promotion_bar: float | None  # what the LC interval's lower end had to clear (0.5 + eval.margin)
    win_rate: Interval | None
    lc_win_rate: Interval | None  # the gate's length-controlled win rate
    prompts: int | None           # the evaluation's held-out prompts ...
    samples_per_prompt: int | None  # ... x samples per prompt
    verdict: str | None           # the gate's: promote | worse | undecided | vetoed
    minimum_detectable: float | None  # the smallest true LC win rate the evaluation would promote
    position_consistency: float | None
    kappa: float | None
    candidate_pass: dict[str, float]
    baseline_pass: dict[str, float]
    policy_lengths: list[int]  # completion tokens of the round's training samples (the policy's answers)


class ExamplePair(BaseModel):
    prompt: str
    chosen: str
    rejected: str
    source: str
    confidence: float
    rationale: str


class Report(BaseModel):
    round_index: int
    round_id: str
    status: str
    decision: str
    policy_id: str
    candidate_id: str | None
    judge_id: str | None
    qualification: QualificationResult | None  # the judge's newest stored qualification for this constitution
    judge_gate: QualificationGate | None       # which model-judged principles this round counted
    people: dict[str, LabelAgreement] = {}     # the judge against people per principle, on labelled real pairs
    corrected_pass: dict[str, dict[str, Interval]] = {}  # judged principle -> {candidate, baseline}: corrected pass rates
    train_reason: str | None
    audit: dict | None           # the confound audit of the trustworthy pairs (training/audit.py)
    eval: EvalOutcome | None
    history: list[RoundPoint]    # rounds 1..round_index
    steps: list[StepMetrics]
    chosen_lengths: list[int]    # this round's trustworthy pairs, before length balancing
    rejected_lengths: list[int]
    examples: list[ExamplePair]


def build_report(store: Store, round_index: int, max_examples: int = 8) -> Report:
    rnd = store.round_by_index(round_index)
    if rnd is None:
        raise StoreError(f"{store.name} has no round {round_index}")
    judge_id = rnd.judge_id
    train = stage_outcome(store, rnd, "training", TrainOutcome)
    preferences = round_preferences(store, rnd.round_id, judge_id, rnd.constitution_hash) if judge_id else []
    examples = sorted(preferences, key=lambda r: (r.source != "human", -r.confidence))[:max_examples]
    steps = store.train_metrics(rnd.train_run_id) if rnd.train_run_id else []
    qualification = next((q for q in store.qualifications()
                          if q.judge_id == judge_id and q.constitution_hash == rnd.constitution_hash), None)
    judge_gate = stage_outcome(store, rnd, "qualify", QualificationGate)
    taught = {t.pair_id for t in judge_gate.taught} if judge_gate else set()
    labelled = labelled_votes(store, judge_id, rnd.constitution_hash, exclude=teaching_pairs(store) | taught) if judge_id else {}
    people = {pid: label_agreement(j, p, seed=stable_int("people", pid)) for pid, (j, p) in labelled.items()}
    evaluation = stage_outcome(store, rnd, "eval", EvalOutcome)
    return Report(
        round_index=rnd.round_index, round_id=rnd.round_id, status=rnd.status, decision=rnd.status_reason or rnd.status,
        policy_id=rnd.policy_id, candidate_id=rnd.candidate_id, judge_id=judge_id,
        qualification=QualificationResult.model_validate(qualification.result_json) if qualification else None,
        judge_gate=judge_gate, people=people,
        corrected_pass=corrected_pass(store, rnd, judge_id, labelled) if evaluation and judge_id else {},
        train_reason=train.reason if train else None, audit=train.audit.model_dump() if train and train.audit else None,
        eval=evaluation,
        history=[round_point(store, r) for r in store.rounds() if r.round_index <= round_index],
        steps=[StepMetrics(**m.model_dump(exclude={"run_id"})) for m in steps],
        chosen_lengths=[len(r.chosen_ids) for r in preferences], rejected_lengths=[len(r.rejected_ids) for r in preferences],
        examples=[ExamplePair(prompt=r.prompt, chosen=r.chosen_text, rejected=r.rejected_text, source=r.source,
                              confidence=r.confidence, rationale=r.rationale) for r in examples],
    )


def corrected_pass(store: Store, rnd: RoundRow, judge_id: str, labelled: dict[str, tuple[list[str], list[str]]]
                   ) -> dict[str, dict[str, Interval]]:
    """Per judged principle with labelled pairs: both models' pass rates in the round's evaluation,
    corrected for the judge's measured errors (evals/corrected.py)."""
    pairs = store.pairs(rnd.round_id, "eval")
    verdicts = store.verdicts([p.pair_id for p in pairs], judge_id, rnd.constitution_hash)
    prompts = {pid: i for i, pid in enumerate(sorted({p.prompt_id for p in pairs}))}
    out = {}
    for principle, (judge_labels, people_labels) in labelled.items():
        votes = [(prompts[p.prompt_id], v.votes_json[principle]) for p in pairs
                 if (v := verdicts.get(p.pair_id)) is not None and v.status == "ok" and v.votes_json.get(principle) in ("a", "b", "tie")]
        found = corrected_pass_rates(votes, judge_labels, people_labels, len(prompts), stable_int("corrected", principle) % 2**31)
        if found is not None:
            out[principle] = found
    return out


def stage_outcome(store: Store, rnd: RoundRow, stage: Stage, model: type[M]) -> M | None:
    """A finished stage's outcome as its typed model (None if the round did not get that far)."""
    row = store.stage_run(rnd.round_id, stage)
    return None if row is None else model.model_validate(row.outcome_json)


def promotion_bar(eval_config: dict) -> float | None:
    """The bar of a round's config snapshot (rounds before intervals had a point-estimate bar)."""
    return 0.5 + eval_config.get("margin", 0.0) if "min_lc_win_rate" not in eval_config else eval_config["min_lc_win_rate"]


def round_point(store: Store, rnd: RoundRow) -> RoundPoint:
    ev = stage_outcome(store, rnd, "eval", EvalOutcome)
    overall = next((a for a in store.agreement(rnd.round_id) if a.scope == "overall"), None)
    candidate = store.by_ids(ModelRow, [rnd.candidate_id]).get(rnd.candidate_id) if rnd.candidate_id else None
    verdicts = store.verdicts_of_round(rnd.round_id).get((rnd.judge_id, rnd.constitution_hash)) if rnd.judge_id else None
    return RoundPoint(
        round_index=rnd.round_index, status=rnd.status, promoted=bool(candidate and candidate.promoted),
        promotion_bar=promotion_bar(rnd.config_json.get("eval") or {}),
        win_rate=ev and ev.raw, lc_win_rate=ev and ev.lc, prompts=ev and ev.prompts,
        samples_per_prompt=ev and ev.samples_per_prompt, verdict=ev and ev.decision.verdict,
        minimum_detectable=ev and ev.minimum_detectable, position_consistency=judge_stats(verdicts).position_consistency if verdicts else None,
        kappa=overall.kappa if overall else None,
        candidate_pass=ev.candidate.principle_pass if ev else {}, baseline_pass=ev.baseline.principle_pass if ev else {},
        policy_lengths=[c.completion_tokens for c in store.completions(rnd.round_id, "train")],
    )
