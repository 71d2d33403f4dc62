"""Judges whose verdicts a test decides, for tests of what happens downstream of judging (the
evaluation's statistics, the promotion gate). They implement the real `PairwiseJudge` protocol and
go through the real judge cache, order combination and verdict storage; only the vote is scripted.

Executable checks still vote as checks do (judges/checks.py); every model-judged principle gets
the scripted vote. In an evaluation's pairs, completion a is the candidate's answer and b the
current policy's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from constitution.loader import Constitution
from judges.checks import check_votes
from judges.verdict import Order, OrderJudgment, PairText, PrincipleVote, scored_judgment
from store.ids import stable_int

Script = Callable[[PairText], str]  # the pair (in pair terms) -> "a", "b" or "tie"


class ScriptedJudge:
    prompt_version = "scripted-v1"
    tie_margin = 0.0

    def __init__(self, name: str, script: Script):
        self.judge_id = f"scripted:{name}"
        self.name, self.script = name, script
        self.taught: list = []

    def with_taught(self, taught) -> ScriptedJudge:
        """Taught by people: from then on it says what people said on the pairs it was taught with."""
        said = {(t.message, t.chosen, t.rejected): t for t in taught}

        def script(pair: PairText) -> str:
            for (message, chosen, rejected) in said:
                if pair.prompt == message and {pair.text_a, pair.text_b} == {chosen, rejected}:
                    return "a" if pair.text_a == chosen else "b"
            return self.script(pair)

        judge = ScriptedJudge(f"{self.name}+taught:{len(taught)}", script)
        judge.taught = list(taught)
        return judge

    def judge(self, items: Sequence[tuple[PairText, Order]], constitution: Constitution,
              progress=lambda done, total: None) -> list[OrderJudgment]:
        out = []
        for i, (pair, order) in enumerate(items):
            winner = self.script(pair)  # in pair terms, whatever the order it is shown in: both orders agree
            score = {"a": 1.0, "b": -1.0, "tie": 0.0}[winner]
            votes = check_votes(pair, constitution)
            votes |= {p.id: PrincipleVote(vote=winner, score=score, source="model", detail="scripted")
                      for p in constitution.principles if p.check is None}
            out.append(scored_judgment(order, votes, constitution, self.tie_margin))
            progress(i + 1, len(items))
        return out


def always(winner: str) -> Script:
    return lambda pair: winner


def coin_flip(seed: int) -> Script:
    """A judge that cannot tell the replies apart: a fair coin per pair, the same coin in both orders."""
    return lambda pair: "a" if stable_int("coin", seed, pair.prompt, pair.text_a, pair.text_b) % 2 else "b"
