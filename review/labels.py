"""What people said about a pair: the majority of its non-skip reviews ("tie" when reviewers split
evenly), overall and per principle. The overall label overrides the judge in the training data;
both are what the judge's agreement with people is measured against."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

from store.ids import stable_id
from store.rows import ReviewRow


def review_id(pair_id: str, reviewer: str, principle: str | None = None) -> str:
    """One label per (pair, reviewer, principle); an overall label keeps the id it always had."""
    return stable_id("review", pair_id, reviewer) if principle is None else stable_id("review", pair_id, reviewer, principle)


def _majority(votes: dict[Hashable, Counter]) -> dict:
    labels = {}
    for key, counts in votes.items():
        (top, n), *rest = counts.most_common()
        labels[key] = "tie" if rest and rest[0][1] == n else top
    return labels


def human_labels(reviews: Iterable[ReviewRow]) -> dict[str, str]:
    """pair id -> "a" | "b" | "tie": the overall preference of the non-skip reviews."""
    votes: dict[Hashable, Counter] = {}
    for r in reviews:
        if r.winner != "skip" and r.principle is None:
            votes.setdefault(r.pair_id, Counter())[r.winner] += 1
    return _majority(votes)


def principle_labels(reviews: Iterable[ReviewRow]) -> dict[tuple[str, str], str]:
    """(pair id, principle) -> "a" | "b" | "tie": what people said about one principle of a pair."""
    votes: dict[Hashable, Counter] = {}
    for r in reviews:
        if r.winner != "skip" and r.principle is not None:
            votes.setdefault((r.pair_id, r.principle), Counter())[r.winner] += 1
    return _majority(votes)
