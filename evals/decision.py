"""The promotion rule: promote, worse, undecided (or vetoed), from the gate's interval.

- promote: the lower end of the length-controlled win rate's interval is above 0.5 + margin;
- worse: its upper end is below 0.5;
- undecided: the interval holds 0.5 (the evaluation cannot tell the two models apart);
- vetoed: it would promote, but an executable check (a constitution check or a probe set) passes
  significantly less often for the candidate than for the current policy (the interval of the
  paired pass-rate difference lies below 0).

Only "promote" replaces the current policy. A one-sided error of (1 - confidence) / 2 is the chance
of promoting a candidate that is no better (2.5% at 95%); a sequential evaluation keeps that rate
over all its looks (stats/sequential.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from stats.intervals import Interval

Verdict = Literal["promote", "worse", "undecided", "vetoed"]


class Look(BaseModel):
    """One look of an evaluation: the data so far and what the gate made of it."""

    samples_per_prompt: int
    pairs: int
    confidence: float  # of this look's intervals (lower than the evaluation's when it looks more than once)
    lc: Interval
    minimum_detectable: float  # the smallest true LC win rate this look promotes with the configured power
    verdict: Verdict


class Decision(BaseModel):
    verdict: Verdict
    reason: str            # one sentence, for the round's decision line, the report and `rlaif status`
    vetoes: list[str] = []  # checks and probes the candidate fails significantly more often


def gate_verdict(lc: Interval, margin: float, vetoes: list[str]) -> Verdict:
    if lc.low > 0.5 + margin:
        return "vetoed" if vetoes else "promote"
    if lc.high < 0.5:
        return "worse"
    return "undecided"


def significant_losses(differences: dict[str, Interval]) -> list[str]:
    """Checks whose paired pass-rate difference (candidate minus policy) is significantly below zero."""
    return sorted(name for name, diff in differences.items() if diff.high < 0)


def explain(look: Look, margin: float, prompts: int, raw: Interval, vetoes: list[str]) -> str:
    """The decision in one sentence that names the numbers it rests on."""
    lc, bar = look.lc, 0.5 + margin
    numbers = (f"length-controlled win rate {lc.estimate:.2f} ({lc.confidence:.1%} interval {lc.low:.2f}-{lc.high:.2f}, "
               f"raw {raw.estimate:.2f}, {prompts} prompts x {look.samples_per_prompt} samples)").replace(".0% interval", "% interval")
    if look.verdict == "promote":
        return f"promoted: {numbers} clears {bar:.2f}"
    if look.verdict == "vetoed":
        return (f"not promoted, the current policy stays: {numbers} clears {bar:.2f}, but the candidate fails "
                f"{', '.join(vetoes)} significantly more often than the current policy")
    if look.verdict == "worse":
        return f"not promoted, the candidate is worse: {numbers} lies below 0.50"
    return (f"undecided, the current policy stays: {numbers} neither clears {bar:.2f} nor lies below 0.50, so this "
            f"evaluation cannot tell the two apart; it would detect a true rate of {look.minimum_detectable:.2f} or more")
