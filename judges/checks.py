"""Principles with an executable check are decided without a model: pass/fail per completion."""

from __future__ import annotations

from constitution.loader import Constitution
from judges.verdict import PairText, PrincipleVote


def check_votes(pair: PairText, constitution: Constitution) -> dict[str, PrincipleVote]:
    """Vote for a completion that passes a check the other fails; a tie when both pass or both fail."""
    votes = {}
    for principle in constitution.principles:
        if principle.check is None:
            continue
        fails_a = principle.check.failures(pair.text_a, pair.prompt)
        fails_b = principle.check.failures(pair.text_b, pair.prompt)
        if bool(fails_a) == bool(fails_b):
            vote, score = "tie", 0.0
        elif fails_b:
            vote, score = "a", 1.0
        else:
            vote, score = "b", -1.0
        detail = f"a: {'; '.join(fails_a) or 'pass'} | b: {'; '.join(fails_b) or 'pass'}"
        votes[principle.id] = PrincipleVote(vote=vote, score=score, source="check", detail=detail)
    return votes
