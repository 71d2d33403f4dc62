"""Judge quality numbers from stored verdicts: position consistency, ties, invalids, vote split,
and agreement between two judges (or a judge and humans)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from store.rows import VerdictRow


class JudgeStats(BaseModel):
    judge_id: str
    constitution_hash: str
    pairs: int
    consistent_pairs: int               # valid verdicts whose two orders named the same winner
    position_consistency: float | None  # both orders named the same winner, among valid verdicts
    tie_rate: float | None              # ties (including disagreeing orders), among valid verdicts
    invalid_rate: float                 # invalid or errored, among all verdicts
    principle_votes: dict[str, dict[str, int]]  # principle -> {a, b, tie, n/a} counts of combined votes


class Agreement(BaseModel):
    n: int
    accuracy: float | None
    kappa: float | None


def judge_stats(verdicts: Sequence[VerdictRow]) -> JudgeStats:
    assert verdicts, "no verdicts"
    ok = [v for v in verdicts if v.status == "ok"]
    split: dict[str, Counter] = {}
    for v in ok:
        for principle, vote in v.votes_json.items():
            split.setdefault(principle, Counter())[vote] += 1
    return JudgeStats(
        judge_id=verdicts[0].judge_id, constitution_hash=verdicts[0].constitution_hash, pairs=len(verdicts),
        consistent_pairs=sum(v.consistent for v in ok),
        position_consistency=sum(v.consistent for v in ok) / len(ok) if ok else None,
        tie_rate=sum(v.winner == "tie" for v in ok) / len(ok) if ok else None,
        invalid_rate=1 - len(ok) / len(verdicts),
        principle_votes={p: {k: c.get(k, 0) for k in ("a", "b", "tie", "n/a")} for p, c in sorted(split.items())},
    )


def cohen_kappa(left: Sequence[str], right: Sequence[str]) -> float | None:
    """Cohen's kappa: agreement corrected for the agreement expected by chance from each side's label rates."""
    assert len(left) == len(right)
    n = len(left)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(left, right)) / n
    left_rates, right_rates = Counter(left), Counter(right)
    expected = sum(left_rates[label] * right_rates[label] for label in left_rates) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def agreement(left: Sequence[VerdictRow], right: Sequence[VerdictRow]) -> Agreement:
    """Winner agreement on the pairs both sides judged validly."""
    right_by_pair = {v.pair_id: v for v in right if v.status == "ok"}
    both = [(v.winner, right_by_pair[v.pair_id].winner) for v in left if v.status == "ok" and v.pair_id in right_by_pair]
    if not both:
        return Agreement(n=0, accuracy=None, kappa=None)
    a, b = zip(*both)
    return Agreement(n=len(both), accuracy=sum(x == y for x, y in both) / len(both), kappa=cohen_kappa(a, b))
