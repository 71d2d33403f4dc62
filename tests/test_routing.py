"""Spot-check routing: random slice, low confidence, high-stakes tags, cap, and the reasons."""

from __future__ import annotations

from review.routing import PairToRoute, RoutingPolicy, route_spot_checks
from store.rows import VerdictRow


def candidate(i: int, consistent: bool = True, confidence: float = 0.5, tags=(), votes=None) -> PairToRoute:
    v = VerdictRow(pair_id=f"p{i}", judge_id="j", constitution_hash="h", status="ok", winner="a" if consistent else "tie",
                   consistent=consistent, confidence=confidence, score=0.5, votes_json=votes or {}, rationale="", judgment_ab="x",
                   judgment_ba="y")
    return PairToRoute(pair_id=f"p{i}", tags=list(tags), verdict=v)


def test_random_slice_is_about_the_rate_and_deterministic():
    pool = [candidate(i) for i in range(2000)]
    policy = RoutingPolicy(random_rate=0.05, low_confidence=False, max_per_round=10_000)
    routed = route_spot_checks(pool, policy, "r", seed=1)
    assert 70 <= len(routed) <= 130
    assert all(r.reasons == ["random"] for r in routed)
    again = route_spot_checks(pool, policy, "r", seed=1)
    assert [(r.pair_id, r.reasons) for r in routed] == [(r.pair_id, r.reasons) for r in again]


def test_low_confidence_and_high_stakes_are_always_routed_first_under_the_cap():
    pool = [candidate(i) for i in range(50)] + [candidate(100, consistent=False), candidate(101, tags=["safety"]),
                                                candidate(102, confidence=0.01)]
    policy = RoutingPolicy(random_rate=0.0, high_stakes_tags=["safety"], max_per_round=2)
    routed = route_spot_checks(pool, policy, "r", seed=0)
    assert [r.pair_id for r in routed] == ["p101", "p100"] or [r.pair_id for r in routed] == ["p101", "p102"]
    assert routed[0].reasons == ["high_stakes:safety"]
    assert routed[1].reasons == ["low_confidence"]
    everything = route_spot_checks(pool, policy.model_copy(update={"max_per_round": 100}), "r", seed=0)
    assert {r.pair_id for r in everything} == {"p100", "p101", "p102"}


def test_principle_triggers_route_pairs_that_principle_decided():
    pool = [candidate(1, votes={"honest": "a"}), candidate(2, votes={"honest": "tie"}), candidate(3, votes={"honest": "n/a"}),
            candidate(4, votes={"courteous": "b"}), candidate(5, votes={"honest": "b", "courteous": "b"})]
    policy = RoutingPolicy(random_rate=0.0, principle_triggers=["honest"])
    routed = {r.pair_id: r.reasons for r in route_spot_checks(pool, policy, "r", seed=0)}
    assert routed == {"p1": ["principle:honest"], "p5": ["principle:honest"]}
