"""Judge qualification: can this judge see each principle before its votes count?

Built from the constitution, so it works for any domain. Each held-out prompt gets one answer from
the policy; from it we make pairs whose right answer is known, and judge each in both orders:

- violation: the answer + a neutral ending vs the answer + one of the principle's `violations` of
  about the same length. The intact answer ("a") must win that principle's vote.
- woven: the answer vs the same answer with one of its sentences replaced by the violation, so a
  judge cannot pass by spotting a sentence tacked on at the end.
- off_topic (principles with `relevance: true`): the answer vs the answer to another prompt.
- identical: the answer vs itself. Every model-judged vote must tie; a judge that leans to one slot
  shows it here directly (slot bias).

`split` picks which of each principle's violations are used: "qualify" (odd positions, held out:
what the product stores and gates on) or "select" (even positions from 2 on, or 0 when there is
none: for choosing a formulation). Position 0 is the one a few-shot judge is shown as an example.

The unit of evidence is a violation text, not a pair: the cases built from one text share whatever
makes that text easy or hard to see, so a principle's sensitivity interval is a bootstrap over its
distinct texts, and a principle with fewer than MIN_VIOLATION_TEXTS held-out texts does not qualify
(its votes may still count by agreement with people).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from constitution.loader import Constitution, Principle
from judges.pointwise import Taught, neutral_endings
from judges.verdict import OrderJudgment, PairText, combine_orders
from stats.agreement import LabelAgreement
from stats.intervals import Interval, cluster_weights, percentile_interval, weighted_means
from store.ids import stable_id, stable_int

Split = Literal["select", "qualify"]
CaseKind = Literal["violation", "woven", "off_topic", "identical"]
CASE_SET_VERSION = "qualification-cases-v3"  # bump when the way cases are built changes
MIN_VIOLATION_TEXTS = 2


class QualificationCase(BaseModel):
    kind: CaseKind
    principle_id: str | None  # None for identical pairs (they test every principle)
    pair: PairText            # text_a is the intact answer
    evidence: str = ""        # the unit of evidence: the violation text (or the off-topic answer's prompt)


class PrincipleQualification(BaseModel):
    n: int
    sensitivity: float          # share of pairs whose vote, both orders agreeing, went to the intact answer
    sensitivity_low: float      # 95% interval, a bootstrap over the distinct violation texts
    sensitivity_high: float
    texts: int = 0              # distinct violation texts (or off-topic answers) behind it
    wrong: float                # both orders agreeing on the broken answer
    flip_rate: float            # the two orders gave opposite decisive votes: the vote followed the slot
    undecided: float            # everything that is not a decided vote (ties, n/a, disagreeing orders)
    mean_score: float = 0.0     # the vote's score towards the intact answer, both orders averaged (> 0: right way)


class QualificationResult(BaseModel):
    judge_id: str
    constitution_hash: str
    set_hash: str
    split: Split
    principles: dict[str, PrincipleQualification]
    position_consistency: float | None  # both orders gave the same vote, over every (case, principle) tested
    slot_bias: float | None             # identical pairs: mean vote for the first slot, in [-1, 1]
    identical_tie_rate: float | None    # identical pairs: share of principle votes that tie in both orders
    pairs: int
    requests: int                       # (pair, order) judgments asked for
    seconds: float
    seconds_per_pair: float


class QualificationGate(BaseModel):
    """What a round does with the evidence about its judge: which model-judged principles count.

    A principle with enough labels from people is decided by the judge's agreement with them
    (`people`); otherwise by the synthetic qualification, and then it is "not yet checked against
    people" wherever it is shown."""

    qualified: list[str] = Field(default_factory=list)
    unqualified: dict[str, str] = Field(default_factory=dict)  # principle id -> why
    people: dict[str, str] = Field(default_factory=dict)       # principle id -> its agreement with people, in words
    taught: list[Taught] = Field(default_factory=list)         # the worked examples from people the judge was given

    @property
    def uncounted(self) -> frozenset[str]:
        return frozenset(self.unqualified)

    @property
    def unchecked(self) -> list[str]:
        """Counted principles whose agreement with people was never measured."""
        return [pid for pid in self.qualified if pid not in self.people]

    def describe(self) -> str:
        def counted(pid: str) -> str:
            return f"{pid} ({self.people[pid]})" if pid in self.people else f"{pid} (not yet checked against people)"

        names = ", ".join(counted(pid) for pid in self.qualified) or "none"
        if not self.unqualified:
            return f"counted: {names}" if self.qualified else "no model-judged principle"
        why = "; ".join(f"{pid}: {reason}" for pid, reason in self.unqualified.items())
        return f"model-judged principles counted: {names}; not counted ({why})"


def set_hash(constitution: Constitution, prompts: Sequence[str], answer_source: dict, split: Split) -> str:
    """The qualification set's identity, known before any answer is sampled (so a cached qualification
    costs nothing): the case builder, the constitution (its violations), the split, the prompts and
    what answers them (policy, sampling parameters, seed)."""
    return stable_id(CASE_SET_VERSION, constitution.content_hash, split, list(prompts), answer_source)[:16]


def build_cases(constitution: Constitution, answers: Sequence[tuple[str, str]], split: Split) -> list[QualificationCase]:
    """Known-answer pairs from (prompt, policy answer) tuples: see the module docstring."""
    if len(answers) < 2:
        raise ValueError("qualification needs at least 2 held-out prompts (an off-topic answer comes from another one)")
    neutral = neutral_endings(constitution)
    cases = []
    for i, (prompt, answer) in enumerate(answers):
        answer = answer.strip()
        for principle in constitution.principles:
            if not principle.judged:
                continue
            held = _half(principle, split)
            if held:
                violation = held[i % len(held)]
                filler = _closest_length(neutral, len(violation))
                cases.append(QualificationCase(kind="violation", principle_id=principle.id, evidence=violation, pair=PairText(
                    prompt=prompt, text_a=f"{answer} {filler}", text_b=f"{answer} {violation}")))
                woven = _weave(answer, violation)
                if woven is not None:
                    cases.append(QualificationCase(kind="woven", principle_id=principle.id, evidence=violation,
                                                   pair=PairText(prompt=prompt, text_a=answer, text_b=woven)))
            if principle.relevance:
                other = answers[(i + 1) % len(answers)][1].strip()
                cases.append(QualificationCase(kind="off_topic", principle_id=principle.id, evidence=f"off-topic {i}",
                                               pair=PairText(prompt=prompt, text_a=answer, text_b=other)))
        cases.append(QualificationCase(kind="identical", principle_id=None,
                                       pair=PairText(prompt=prompt, text_a=answer, text_b=answer)))
    return cases


def _half(principle: Principle, split: Split) -> list[str]:
    if split == "qualify":
        return principle.violations[1::2]
    return principle.violations[2::2] or principle.violations[:1]


def _weave(answer: str, violation: str) -> str | None:
    """The answer with its middle sentence replaced by the violation (None: fewer than two sentences)."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", answer) if s]
    if len(sentences) < 2:
        return None
    sentences[len(sentences) // 2] = violation
    return " ".join(sentences)


def _closest_length(texts: Sequence[str], length: int) -> str:
    return min(texts, key=lambda t: abs(len(t) - length))


def qualify(judge, constitution: Constitution, cases: Sequence[QualificationCase], set_id: str, split: Split,
            progress: Callable[[int, int], None] = lambda done, total: None) -> QualificationResult:
    """Judge every case in both orders and measure, per principle, whether the vote goes where it must."""
    items = [(case.pair, order) for case in cases for order in ("ab", "ba")]
    started = time.perf_counter()
    judged = judge.judge(items, constitution, progress)
    seconds = time.perf_counter() - started
    return measure(judge.judge_id, constitution, cases, judged, set_id, split, seconds)


def measure(judge_id: str, constitution: Constitution, cases: Sequence[QualificationCase],
            judged: Sequence[OrderJudgment], set_id: str, split: Split, seconds: float) -> QualificationResult:
    model_principles = [p.id for p in constitution.principles if p.judged]
    outcomes: dict[str, list[str]] = {pid: [] for pid in model_principles}  # intact | broken | flip | undecided
    units: dict[str, list[str]] = {pid: [] for pid in model_principles}     # each outcome's unit of evidence
    scores: dict[str, list[float]] = {pid: [] for pid in model_principles}
    same_vote = tested = 0
    slot_scores: list[float] = []
    identical_ties = identical_votes = 0
    for i, case in enumerate(cases):
        ab, ba = judged[2 * i], judged[2 * i + 1]
        if ab.parse_status != "ok" or ba.parse_status != "ok":
            if case.principle_id is not None:
                outcomes[case.principle_id].append("undecided")
                units[case.principle_id].append(case.evidence)
            continue
        combined = combine_orders(ab, ba).votes
        tested_here = [case.principle_id] if case.principle_id else model_principles
        for pid in tested_here:
            va, vb = ab.votes.get(pid), ba.votes.get(pid)
            if va is None or vb is None:
                continue
            tested += 1
            same_vote += va.vote == vb.vote
            if case.kind == "identical":
                # pair terms -> slot terms: in order ab slot 1 is a, in ba slot 1 is b
                slot_scores += [va.score, -vb.score]
                identical_votes += 1
                identical_ties += va.vote == "tie" and vb.vote == "tie"
                continue
            scores[pid].append((va.score + vb.score) / 2)  # pair terms: > 0 favours a, the intact answer
            units[pid].append(case.evidence)
            decided = combined.get(pid)
            if decided == "a":
                outcomes[pid].append("intact")
            elif decided == "b":
                outcomes[pid].append("broken")
            elif {va.vote, vb.vote} == {"a", "b"}:
                outcomes[pid].append("flip")
            else:
                outcomes[pid].append("undecided")
    principles = {}
    for pid, seen in outcomes.items():
        if not seen:
            continue
        n = len(seen)
        interval = _sensitivity_interval([x == "intact" for x in seen], units[pid], seed=stable_int("qualification", pid))
        principles[pid] = PrincipleQualification(
            n=n, sensitivity=seen.count("intact") / n, sensitivity_low=interval.low, sensitivity_high=interval.high,
            texts=len(set(units[pid])),
            wrong=seen.count("broken") / n, flip_rate=seen.count("flip") / n,
            undecided=(seen.count("undecided") + seen.count("flip")) / n,
            mean_score=sum(scores[pid]) / len(scores[pid]) if scores[pid] else 0.0)
    return QualificationResult(
        judge_id=judge_id, constitution_hash=constitution.content_hash, set_hash=set_id, split=split,
        principles=principles,
        position_consistency=same_vote / tested if tested else None,
        slot_bias=sum(slot_scores) / len(slot_scores) if slot_scores else None,
        identical_tie_rate=identical_ties / identical_votes if identical_votes else None,
        pairs=len(cases), requests=len(judged), seconds=seconds, seconds_per_pair=seconds / max(len(cases), 1))


class PeopleBars(BaseModel):
    """When agreement with people decides a principle (the config's review section holds the bars)."""

    min_reviewed: int   # labelled pairs of a principle from which people's labels decide it
    min_kappa: float    # ... it counts if kappa reaches this and its interval's lower end is above 0


def _sensitivity_interval(hits: Sequence[bool], units: Sequence[str], seed: int) -> Interval:
    """95% interval of the share of hits, by a bootstrap over the units of evidence (the violation texts)."""
    names = sorted(set(units))
    cluster = np.array([names.index(u) for u in units])
    weights = np.concatenate([np.ones((1, len(names))), cluster_weights(len(names), seed, 2000)]).astype(np.float64)
    replicates = weighted_means(np.array(hits, dtype=np.float64), cluster, weights)
    return percentile_interval(float(replicates[0]), replicates[1:], 0.95, len(names))


def gate(result: QualificationResult | None, constitution: Constitution, min_sensitivity: float,
         max_slot_bias: float, people: dict[str, LabelAgreement] | None = None, bars: PeopleBars | None = None
         ) -> QualificationGate:
    """Which model-judged principles count.

    A principle with at least `bars.min_reviewed` pairs labelled by people (`people`: the judge's
    agreement with them per principle) counts if its kappa reaches `bars.min_kappa` and the kappa
    interval's lower end is above 0, whatever the synthetic qualification says. Any other principle
    goes by the qualification: one the set could not test (no violations, not relevance) stays
    unqualified, as a judge is trusted on what it was shown to see, not by default."""
    model_principles = [p.id for p in constitution.principles if p.judged]
    out = QualificationGate()
    people = people or {}
    for pid, agreed in people.items():
        if pid in model_principles and agreed.n > 0 and agreed.kappa is not None:
            out.people[pid] = (f"kappa {agreed.kappa:.2f}, 95% CI {_fmt(agreed.kappa_low)} to {_fmt(agreed.kappa_high)}, "
                               f"on {agreed.n} pairs labelled by reviewers")
    decided_by_people = {pid for pid in out.people if bars is not None and people[pid].n >= bars.min_reviewed}
    biased = result is not None and result.slot_bias is not None and abs(result.slot_bias) > max_slot_bias
    for pid in model_principles:
        found = None if result is None else result.principles.get(pid)
        if pid in decided_by_people:
            assert bars is not None
            if (people[pid].kappa or 0.0) >= bars.min_kappa and (people[pid].kappa_low or 0.0) > 0:
                out.qualified.append(pid)
            else:
                out.unqualified[pid] = f"{out.people[pid]}: below review.min_kappa {bars.min_kappa:.2f} or not above 0"
        elif result is None:
            out.qualified.append(pid)  # qualification is switched off
        elif biased:
            out.unqualified[pid] = f"slot bias {result.slot_bias:+.2f} beyond {max_slot_bias:.2f} on identical answers"
        elif found is None:
            out.unqualified[pid] = "not tested (no violations in the constitution)"
        elif found.texts < MIN_VIOLATION_TEXTS:
            out.unqualified[pid] = (f"only {found.texts} held-out violation text: too few to tell (add violations to the "
                                    "constitution, or label pairs)")
        elif found.sensitivity < min_sensitivity:
            out.unqualified[pid] = f"sensitivity {found.sensitivity:.0%} < {min_sensitivity:.0%}"
        else:
            out.qualified.append(pid)
    return out


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"

