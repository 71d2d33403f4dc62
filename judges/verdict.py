"""Judge outputs and how the two presentation orders of a pair become one verdict.

Everything here is in *pair terms*: "a" and "b" are the pair's two completions, whichever slot
(A or B) the judge saw them in. A judgment's `shown_order` says which one was shown first.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from constitution.loader import Constitution

Vote = Literal["a", "b", "tie", "n/a"]
Order = Literal["ab", "ba"]
ORDERS: tuple[Order, Order] = ("ab", "ba")  # a pair is judged in both


class PairText(BaseModel):
    """What a judge sees: the customer's message and the pair's two completions."""

    prompt: str
    text_a: str
    text_b: str


class PrincipleVote(BaseModel):
    vote: Vote
    score: float = Field(ge=-1, le=1, description="> 0 favours a")
    source: Literal["check", "model"]
    detail: str = ""


class OrderJudgment(BaseModel):
    """A pair judged in one presentation order."""

    order: Order
    parse_status: Literal["ok", "invalid", "error"]
    winner: Literal["a", "b", "tie"] | None = None
    score: float | None = None
    votes: dict[str, PrincipleVote] = Field(default_factory=dict)
    rationale: str = ""
    raw_response: str = ""
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class PairVerdict(BaseModel):
    status: Literal["ok", "invalid", "error"]
    winner: Literal["a", "b", "tie"] | None
    consistent: bool
    confidence: float
    score: float | None
    votes: dict[str, Vote]
    rationale: str


def shown_texts(pair: PairText, order: Order) -> tuple[str, str]:
    """The two completions in the order the judge is shown them (slot A first, slot B second)."""
    return (pair.text_a, pair.text_b) if order == "ab" else (pair.text_b, pair.text_a)


def pair_score(slot_score: float, order: Order) -> float:
    """A score in slot terms (> 0 favours the reply shown first) in pair terms (> 0 favours a)."""
    return slot_score if order == "ab" else -slot_score


def winner_of(score: float, tie_margin: float) -> Literal["a", "b", "tie"]:
    if score > tie_margin:
        return "a"
    if score < -tie_margin:
        return "b"
    return "tie"


def weighted_score(votes: dict[str, PrincipleVote], constitution: Constitution,
                   uncounted: frozenset[str] = frozenset()) -> float:
    """Principle scores weighted by the constitution's weights; n/a and `uncounted` principles don't count."""
    total = weight = 0.0
    for principle in constitution.principles:
        vote = votes.get(principle.id)
        if vote is None or vote.vote == "n/a" or principle.id in uncounted:
            continue
        total += principle.weight * vote.score
        weight += principle.weight
    return total / weight if weight else 0.0


def rationale_line(winner: str, score: float, votes: dict[str, PrincipleVote], constitution: Constitution) -> str:
    """The preference basis in one line: overall call, then each principle's vote and evidence."""
    parts = [f"{p.id}={votes[p.id].vote} ({votes[p.id].detail})" for p in constitution.principles if p.id in votes]
    head = "tie" if winner == "tie" else f"{winner} preferred"
    return f"{head}, weighted score {score:+.2f}: " + "; ".join(parts)


def scored_judgment(order: Order, votes: dict[str, PrincipleVote], constitution: Constitution, tie_margin: float,
                    **fields) -> OrderJudgment:
    """An `ok` judgment from every principle's vote: the weighted score, its winner and the one-line rationale."""
    score = weighted_score(votes, constitution)
    winner = winner_of(score, tie_margin)
    return OrderJudgment(order=order, parse_status="ok", winner=winner, score=score, votes=votes,
                         rationale=rationale_line(winner, score, votes, constitution), **fields)


def without_uncounted(judgment: OrderJudgment, constitution: Constitution, uncounted: frozenset[str],
                      tie_margin: float) -> OrderJudgment:
    """The same judgment with the votes of `uncounted` principles kept but left out of its score and winner.

    Qualification (judges/qualification.py) names the principles a judge cannot see; their votes are
    stored as the judge gave them, and only the principles it can see decide the pair.
    """
    if judgment.parse_status != "ok" or not uncounted & judgment.votes.keys():
        return judgment
    score = weighted_score(judgment.votes, constitution, uncounted)
    winner = winner_of(score, tie_margin)
    note = f" [not counted, judge not qualified: {', '.join(sorted(uncounted & judgment.votes.keys()))}]"
    return judgment.model_copy(update={"score": score, "winner": winner, "rationale": judgment.rationale + note})


def combine_orders(ab: OrderJudgment, ba: OrderJudgment) -> PairVerdict:
    """Both orders must name the same winner; if they disagree the pair is a zero-confidence tie.

    The score is the mean of the two orders, which cancels a constant preference for a slot.
    An invalid or errored order makes the whole verdict invalid/error: never a preference.
    """
    if ab.parse_status != "ok" or ba.parse_status != "ok":
        status = "error" if "error" in (ab.parse_status, ba.parse_status) else "invalid"
        return PairVerdict(status=status, winner=None, consistent=False, confidence=0.0, score=None,
                           votes={}, rationale=f"not a preference: order ab {ab.parse_status}, order ba {ba.parse_status}")
    assert ab.score is not None and ba.score is not None
    score = (ab.score + ba.score) / 2
    consistent = ab.winner == ba.winner and ab.winner != "tie"
    votes: dict[str, Vote] = {}
    for pid in ab.votes.keys() | ba.votes.keys():
        va, vb = ab.votes.get(pid), ba.votes.get(pid)
        votes[pid] = va.vote if va and vb and va.vote == vb.vote else "tie"
    if consistent:
        winner, confidence = ab.winner, min(abs(ab.score), abs(ba.score))
        rationale = f"{winner} preferred in both orders. Order ab: {ab.rationale} Order ba: {ba.rationale}"
    else:
        winner, confidence = "tie", 0.0
        rationale = f"orders disagree (ab: {ab.winner}, ba: {ba.winner}): treated as a tie. Order ab: {ab.rationale} Order ba: {ba.rationale}"
    return PairVerdict(status="ok", winner=winner, consistent=consistent, confidence=confidence,
                       score=score, votes=votes, rationale=rationale)
