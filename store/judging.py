"""Queries of what was sampled and judged: completions, pairs, verdicts, qualifications."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from store.connection import Connection, _from_record
from store.rows import CompletionRow, JudgeQualificationRow, PairRecord, PairRow, VerdictRow


class JudgingQueries(Connection):
    """Completions, pairs (and their texts), verdicts, the judge's qualifications."""

    def completions(self, round_id: str, purpose: str) -> list[CompletionRow]:
        return self._select(CompletionRow, "round_id = ? AND purpose = ?", [round_id, purpose], "completion_id")

    def pairs(self, round_id: str, purpose: str) -> list[PairRow]:
        return self._select(PairRow, "round_id = ? AND purpose = ?", [round_id, purpose], "pair_id")

    def verdicts(self, pair_ids: Iterable[str], judge_id: str, constitution_hash: str) -> dict[str, VerdictRow]:
        rows = self._select(
            VerdictRow,
            "pair_id IN (SELECT unnest(?)) AND judge_id = ? AND constitution_hash = ?",
            [list(pair_ids), judge_id, constitution_hash],
        )
        return {r.pair_id: r for r in rows}

    def judged_pairs(self, round_id: str, judge_id: str, constitution_hash: str) -> list[PairRecord]:
        """The round's training pairs with texts, token ids and (if judged) the judge's verdict.

        Round-robin comparisons (n>2) only rank samples; their max_min selections are the training pairs.
        """
        columns, rows = self._query(
            """
            SELECT p.pair_id, pr.text AS prompt, pr.tags AS prompt_tags,
                   ca.text AS text_a, cb.text AS text_b, ca.token_ids AS ids_a, cb.token_ids AS ids_b,
                   ca.sum_logprob AS logp_a, cb.sum_logprob AS logp_b,
                   v.status AS verdict_status, v.winner AS judge_winner, coalesce(v.consistent, false) AS consistent,
                   coalesce(v.confidence, 0.0) AS confidence, coalesce(v.rationale, '') AS rationale,
                   coalesce(v.votes_json, '{}') AS votes_json
            FROM pairs p
            LEFT JOIN verdicts v ON v.pair_id = p.pair_id AND v.judge_id = ? AND v.constitution_hash = ?
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            JOIN prompts pr ON pr.prompt_id = p.prompt_id
            WHERE p.round_id = ? AND p.purpose = 'train' AND p.pairing <> 'round_robin'
            ORDER BY p.pair_id
            """,
            [judge_id, constitution_hash, round_id],
        )
        return [_from_record(PairRecord, dict(zip(columns, values))) for values in rows]

    def pair_texts(self, purpose: str) -> dict[str, tuple[str, str, str]]:
        """pair id -> (prompt, text a, text b) of every pair with this purpose."""
        return self._pair_texts("p.purpose = ?", [purpose])

    def pair_texts_of(self, pair_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """pair id -> (prompt, text a, text b) of these pairs."""
        return self._pair_texts("p.pair_id IN (SELECT unnest(?))", [list(pair_ids)])

    def _pair_texts(self, where: str, params: Sequence[Any]) -> dict[str, tuple[str, str, str]]:
        _, rows = self._query(
            f"""
            SELECT p.pair_id, pr.text, ca.text, cb.text FROM pairs p
            JOIN prompts pr ON pr.prompt_id = p.prompt_id
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            WHERE {where}
            """, params)
        return {pair_id: (prompt, a, b) for pair_id, prompt, a, b in rows}

    def pairs_by_texts(self, texts: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[tuple[str, bool]]]:
        """(prompt, text a, text b) -> [(pair id, swapped)] of the stored pairs with that prompt and those two
        completions; swapped: the pair holds them the other way round."""
        if not texts:
            return {}
        prompts, texts_a, texts_b = (list(column) for column in zip(*texts))
        _, rows = self._query(
            """
            SELECT l.prompt, l.text_a, l.text_b, p.pair_id, ca.text <> l.text_a AS swapped
            FROM (SELECT unnest(?) AS prompt, unnest(?) AS text_a, unnest(?) AS text_b) l
            JOIN prompts pr ON pr.text = l.prompt
            JOIN pairs p ON p.prompt_id = pr.prompt_id
            JOIN completions ca ON ca.completion_id = p.completion_a
            JOIN completions cb ON cb.completion_id = p.completion_b
            WHERE (ca.text = l.text_a AND cb.text = l.text_b) OR (ca.text = l.text_b AND cb.text = l.text_a)
            ORDER BY p.pair_id
            """,
            [prompts, texts_a, texts_b],
        )
        found: dict[tuple[str, str, str], list[tuple[str, bool]]] = {}
        for prompt, text_a, text_b, pair_id, swapped in rows:
            found.setdefault((prompt, text_a, text_b), []).append((pair_id, bool(swapped)))
        return found

    def verdicts_of_round(self, round_id: str, purpose: str = "train") -> dict[tuple[str, str], list[VerdictRow]]:
        """Every verdict on the round's pairs, grouped by (judge id, constitution hash)."""
        rows = self._select(
            VerdictRow, "pair_id IN (SELECT pair_id FROM pairs WHERE round_id = ? AND purpose = ?)",
            [round_id, purpose], "judge_id, pair_id")
        grouped: dict[tuple[str, str], list[VerdictRow]] = {}
        for r in rows:
            grouped.setdefault((r.judge_id, r.constitution_hash), []).append(r)
        return grouped

    def qualification(self, judge_id: str, constitution_hash: str, set_hash: str) -> JudgeQualificationRow | None:
        found = self._select(JudgeQualificationRow, "judge_id = ? AND constitution_hash = ? AND set_hash = ?",
                             [judge_id, constitution_hash, set_hash])
        return found[0] if found else None

    def qualifications(self) -> list[JudgeQualificationRow]:
        """Every stored qualification, newest first."""
        return self._select(JudgeQualificationRow, order="created_at DESC")
