"""Judging as a round stage: both orders of every pair, cached in the store, combined to verdicts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from constitution.loader import Constitution
from judges.verdict import ORDERS, Order, OrderJudgment, PairText, combine_orders, without_uncounted
from store.db import Store
from store.ids import stable_id
from store.rows import CompletionRow, JudgmentRow, PairRow, PromptRow, VerdictRow

Progress = Callable[[int, int], None]


class PairwiseJudge(Protocol):
    judge_id: str
    prompt_version: str
    tie_margin: float

    def judge(self, items: Sequence[tuple[PairText, Order]], constitution: Constitution,
              progress: Progress = ...) -> list[OrderJudgment]: ...


def judgment_id(judge: PairwiseJudge, constitution: Constitution, pair: PairText, order: Order) -> str:
    """The judge cache key: the same judge, constitution, template, texts and order never pay twice."""
    return stable_id("judgment", judge.judge_id, constitution.content_hash, judge.prompt_version,
                     pair.prompt, pair.text_a, pair.text_b, order)


def judge_pairs(
    store: Store,
    judge: PairwiseJudge,
    constitution: Constitution,
    pairs: Sequence[PairRow],
    progress: Progress = lambda done, total: None,
    uncounted: frozenset[str] = frozenset(),
) -> dict[str, VerdictRow]:
    """Judge every pair in both orders (skipping cached judgments) and store their verdicts.

    `uncounted`: model-judged principles the judge did not qualify on. Their votes stay in the
    judgments (and the judgment cache), but the verdict's winner is decided without them.
    """
    completions = store.by_ids(CompletionRow, [c for p in pairs for c in (p.completion_a, p.completion_b)])
    prompts = store.by_ids(PromptRow, [p.prompt_id for p in pairs])
    texts = {
        p.pair_id: PairText(prompt=prompts[p.prompt_id].text, text_a=completions[p.completion_a].text,
                            text_b=completions[p.completion_b].text)
        for p in pairs
    }
    wanted = {(p.pair_id, order): judgment_id(judge, constitution, texts[p.pair_id], order)
              for p in pairs for order in ORDERS}
    cached = store.by_ids(JudgmentRow, wanted.values())
    todo = [(pair_key, order) for (pair_key, order), jid in wanted.items() if jid not in cached]
    if todo:
        fresh = judge.judge([(texts[k], order) for k, order in todo], constitution, progress)
        rows = [_judgment_row(wanted[(k, order)], k, judge, constitution, j) for (k, order), j in zip(todo, fresh)]
        store.append(rows)
        cached.update({r.judgment_id: r for r in rows})
    else:
        progress(1, 1)

    verdicts = []
    for p in pairs:
        ab, ba = cached[wanted[(p.pair_id, "ab")]], cached[wanted[(p.pair_id, "ba")]]
        v = combine_orders(*(without_uncounted(_order_judgment(j), constitution, uncounted, judge.tie_margin) for j in (ab, ba)))
        verdicts.append(VerdictRow(
            pair_id=p.pair_id, judge_id=judge.judge_id, constitution_hash=constitution.content_hash,
            status=v.status, winner=v.winner, consistent=v.consistent, confidence=v.confidence, score=v.score,
            votes_json=v.votes, rationale=v.rationale, judgment_ab=ab.judgment_id, judgment_ba=ba.judgment_id,
            uncounted=sorted(uncounted),
        ))
    store.replace(verdicts)  # derived from the judgments: a changed gate recomputes them
    return store.verdicts([p.pair_id for p in pairs], judge.judge_id, constitution.content_hash)


def _judgment_row(jid: str, pair_key: str, judge: PairwiseJudge, constitution: Constitution, j: OrderJudgment) -> JudgmentRow:
    return JudgmentRow(
        judgment_id=jid, pair_id=pair_key, judge_id=judge.judge_id, constitution_hash=constitution.content_hash,
        prompt_version=judge.prompt_version, shown_order=j.order, parse_status=j.parse_status,
        winner=j.winner if j.parse_status == "ok" else None, score=j.score if j.parse_status == "ok" else None,
        votes_json={k: v.model_dump() for k, v in j.votes.items()}, rationale=j.rationale, raw_response=j.raw_response,
        latency_s=j.latency_s, prompt_tokens=j.prompt_tokens, completion_tokens=j.completion_tokens, cost_usd=j.cost_usd,
    )


def _order_judgment(row: JudgmentRow) -> OrderJudgment:
    return OrderJudgment(order=row.shown_order, parse_status=row.parse_status, winner=row.winner, score=row.score,
                         votes=row.votes_json, rationale=row.rationale, raw_response=row.raw_response)
