"""Judge quality numbers from stored verdicts: position consistency, ties, invalids, vote split,
and agreement between two judges (or a judge and humans)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from stats.agreement import cohen_kappa
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


def agreement(left: Sequence[VerdictRow], right: Sequence[VerdictRow]) -> Agreement:
    """Winner agreement on the pairs both sides judged validly."""
    right_by_pair = {v.pair_id: v for v in right if v.status == "ok"}
    both = [(v.winner, right_by_pair[v.pair_id].winner) for v in left if v.status == "ok" and v.pair_id in right_by_pair]
    if not both:
        return Agreement(n=0, accuracy=None, kappa=None)
    a, b = zip(*both)
    return Agreement(n=len(both), accuracy=sum(x == y for x, y in both) / len(both), kappa=cohen_kappa(a, b))


def co_decisions(labels: Sequence[dict[str, str]], principles: Sequence[str]) -> dict[tuple[str, str], tuple[int, float]]:
    """For every two principles: on how many pairs both picked a reply, and the share where they picked
    the same one. `labels`: one {principle: a | b | tie} per pair, from the judge or from people. A judge
    whose principles always agree gives one signal under several names; people's labels show how
    often the principles really move together."""
    out = {}
    for i, left in enumerate(principles):
        for right in principles[i + 1:]:
            both = [(x[left], x[right]) for x in labels if x.get(left) in ("a", "b") and x.get(right) in ("a", "b")]
            if both:
                out[(left, right)] = (len(both), sum(a == b for a, b in both) / len(both))
    return out

