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
    policy = RoutingPolicy(random_rate=0.05, low_confidence=False, max_per_round=10_000, max_share=1.0)
    routed = route_spot_checks(pool, policy, "r", seed=1).queue
    assert 70 <= len(routed) <= 130
    assert all(r.reasons == ["random"] for r in routed)
    again = route_spot_checks(pool, policy, "r", seed=1).queue
    assert [(r.pair_id, r.reasons) for r in routed] == [(r.pair_id, r.reasons) for r in again]


def test_low_confidence_and_high_stakes_are_always_routed_first_under_the_cap():
    pool = [candidate(i) for i in range(50)] + [candidate(100, consistent=False), candidate(101, tags=["safety"]),
                                                candidate(102, confidence=0.01)]
    policy = RoutingPolicy(random_rate=0.0, high_stakes_tags=["safety"], max_per_round=2, max_share=1.0)
    routed = route_spot_checks(pool, policy, "r", seed=0)
    queue = routed.queue
    assert [r.pair_id for r in queue] == ["p101", "p100"] or [r.pair_id for r in queue] == ["p101", "p102"]
    assert queue[0].reasons == ["high_stakes:safety"]
    assert queue[1].reasons == ["low_confidence"]
    assert routed.describe(53) == ("2 of 53 pairs queued for review (1 high_stakes:safety, 1 low_confidence); "
                                   "1 more had a reason but the cap (2) left them out")
    everything = route_spot_checks(pool, policy.model_copy(update={"max_per_round": 100}), "r", seed=0).queue
    assert {r.pair_id for r in everything} == {"p100", "p101", "p102"}


def test_the_cap_is_also_a_share_of_the_round_so_the_slice_stays_a_slice():
    """20 pairs, most of them low-confidence: the default cap (25% of the round) queues 5, not 17."""
    pool = [candidate(i, consistent=i % 7 == 0) for i in range(20)]
    routed = route_spot_checks(pool, RoutingPolicy(random_rate=0.0), "r", seed=0)
    assert routed.candidates == 17 and routed.cap == 5 and len(routed.queue) == 5
    assert routed.describe(20).startswith("5 of 20 pairs queued for review (5 low_confidence); 12 more had a reason")


def test_principle_triggers_route_pairs_that_principle_decided():
    pool = [candidate(1, votes={"honest": "a"}), candidate(2, votes={"honest": "tie"}), candidate(3, votes={"honest": "n/a"}),
            candidate(4, votes={"courteous": "b"}), candidate(5, votes={"honest": "b", "courteous": "b"})]
    policy = RoutingPolicy(random_rate=0.0, principle_triggers=["honest"], max_share=1.0)
    routed = {r.pair_id: r.reasons for r in route_spot_checks(pool, policy, "r", seed=0).queue}
    assert routed == {"p1": ["principle:honest"], "p5": ["principle:honest"]}
