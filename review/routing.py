"""Which pairs go to human spot-check review, and why.

A pair is routed when it falls in the random slice, when its verdict is low-confidence (orders
disagree, a small margin, or not a valid judgment at all), when its prompt carries a tag marked
high-stakes, or when a principle listed in `principle_triggers` decided for one side (for
principles whose judging you want humans to watch). A per-round cap keeps the queue a slice people
can review: at most `max_per_round` pairs and at most `max_share` of the round's pairs. When it binds,
high-stakes pairs go first, then low-confidence and principle-triggered ones, then random. The random
slice is a hash of (seed, pair), so reruns route the same pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from store.ids import stable_int
from store.rows import ReviewQueueRow, VerdictRow


class RoutingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    random_rate: float = Field(default=0.05, ge=0, le=1, description="share of pairs routed at random")
    low_confidence: bool = Field(default=True, description="route pairs whose orders disagree, or that are invalid")
    low_confidence_below: float = Field(default=0.1, ge=0, le=1, description="... or whose verdict's confidence is below this")
    high_stakes_tags: list[str] = Field(default_factory=list, description="route every pair whose prompt has one of these tags")
    principle_triggers: list[str] = Field(default_factory=list, description="route pairs where these principles voted a or b")
    max_per_round: int = Field(default=50, ge=0, description="at most this many pairs per round go to review")
    max_share: float = Field(default=0.25, ge=0, le=1, description="... and at most this share of the round's pairs")


class Routed(BaseModel):
    queue: list[ReviewQueueRow]
    candidates: int          # pairs that had a reason to be reviewed
    cap: int                 # the per-round cap that applied

    def describe(self, pairs: int) -> str:
        """Why pairs were routed, in one line: how many, for which reasons, and what the cap left out."""
        reasons: dict[str, int] = {}
        for row in self.queue:
            for reason in row.reasons:
                reasons[reason] = reasons.get(reason, 0) + 1
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])) or "none had a reason"
        left = self.candidates - len(self.queue)
        capped = f"; {left} more had a reason but the cap ({self.cap}) left them out" if left else ""
        return f"{len(self.queue)} of {pairs} pairs queued for review ({why}){capped}"


class PairToRoute(BaseModel):
    pair_id: str
    tags: list[str]
    verdict: VerdictRow


def route_spot_checks(pairs: Sequence[PairToRoute], policy: RoutingPolicy, round_id: str, seed: int) -> Routed:
    routed: list[tuple[int, ReviewQueueRow]] = []
    for c in pairs:
        reasons = [f"high_stakes:{t}" for t in c.tags if t in policy.high_stakes_tags]
        v = c.verdict
        if policy.low_confidence and (v.status != "ok" or not v.consistent or v.confidence < policy.low_confidence_below):
            reasons.append("low_confidence")
        reasons += [f"principle:{p}" for p in policy.principle_triggers if v.votes_json.get(p) in ("a", "b")]
        if stable_int("spot-check", seed, c.pair_id) / 2**63 < policy.random_rate:
            reasons.append("random")
        if reasons:
            priority = 0 if reasons[0].startswith("high_stakes") else 2 if reasons == ["random"] else 1
            routed.append((priority, ReviewQueueRow(pair_id=c.pair_id, round_id=round_id, reasons=reasons)))
    routed.sort(key=lambda item: (item[0], stable_int("cap", seed, item[1].pair_id)))
    cap = min(policy.max_per_round, math.ceil(policy.max_share * len(pairs)))
    return Routed(queue=[row for _, row in routed[:cap]], candidates=len(routed), cap=cap)
