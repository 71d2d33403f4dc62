"""The pointwise formulation, shared by the local and the OpenAI-compatible judge.

One (reply, principle) per request: "does this reply break the principle? yes/no", scored from the
answer token's probabilities, so the judge never sees two replies side by side and has no slot to
prefer. A pair's vote on a principle is p(breaks | b) - p(breaks | a). The question names the
principle after the message and the reply: a reply is read once and asked about each principle
(the local judge shares its key/value cache; a server with prefix caching does the same).

Few-shot: worked examples built from the constitution come first in every request (one shared
prefix): each principle's first violation (position 0; never the held-out odd positions that
qualify a judge) answered "yes", and a neutral ending answered "no". A judge taught by people
(`Taught`) adds, per principle, real replies people compared on it: the reply they rejected
answered "yes", the one they preferred "no".
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from constitution.loader import Constitution, Principle
from judges.templates import JudgeTemplate
from judges.verdict import PrincipleVote, winner_of

TEMPLATE_NAME = "pointwise_v2"
EXAMPLE_MESSAGE = "(an example message)"
GENERIC_NEUTRAL_ENDINGS = (
    "Thank you for your message, and please let me know if there is anything else I can help with.",
    "I hope this helps, and feel free to write again if you have any other questions at all.",
    "Thanks again for getting in touch, and have a good rest of your day.",
)


def neutral_endings(constitution: Constitution) -> list[str]:
    return list(constitution.neutral_endings) or list(GENERIC_NEUTRAL_ENDINGS)


def question(template: JudgeTemplate, principle: Principle, message: str, reply: str) -> str:
    return template.user.format(principle=principle.text, prompt=message, response=reply)


class Taught(BaseModel):
    """A worked example from people: on `principle`, they preferred `chosen` to `rejected` as replies to
    `message` (stored pair `pair_id`, which is then never evidence of the judge's agreement with people)."""

    pair_id: str
    principle: str
    message: str
    chosen: str
    rejected: str


def example_turns(template: JudgeTemplate, constitution: Constitution, principles: Sequence[Principle],
                  taught: Sequence[Taught] = ()) -> list[tuple[str, str]]:
    """(question, answer) turns: one violation -> "yes" and one neutral ending -> "no" per principle,
    then each of its taught examples: the rejected reply -> "yes", the chosen one -> "no"."""
    neutral = neutral_endings(constitution)
    turns = []
    shown = 0  # principles with a violation so far: they take the neutral endings in turn
    for principle in principles:
        if principle.violations:
            turns.append((question(template, principle, EXAMPLE_MESSAGE, principle.violations[0]), "yes"))
            turns.append((question(template, principle, EXAMPLE_MESSAGE, neutral[shown % len(neutral)]), "no"))
            shown += 1
        for example in (t for t in taught if t.principle == principle.id):
            turns.append((question(template, principle, example.message, example.rejected), "yes"))
            turns.append((question(template, principle, example.message, example.chosen), "no"))
    return turns


def pair_vote(breaks_a: float, breaks_b: float, tie_margin: float) -> PrincipleVote:
    score = breaks_b - breaks_a  # > 0: b is the likelier to break it, so a is preferred
    return PrincipleVote(vote=winner_of(score, tie_margin), score=score, source="model",
                         detail=f"p(breaks | a)={breaks_a:.2f} p(breaks | b)={breaks_b:.2f}")
