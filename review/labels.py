"""The human label of a reviewed pair: the majority of its non-skip reviews ("tie" when reviewers
split evenly). It overrides the judge in the training data and is what agreement is measured against."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from store.rows import ReviewRow


def human_labels(reviews: Iterable[ReviewRow]) -> dict[str, str]:
    """pair id -> "a" | "b" | "tie" from the non-skip reviews."""
    votes: dict[str, Counter] = {}
    for r in reviews:
        if r.winner != "skip":
            votes.setdefault(r.pair_id, Counter())[r.winner] += 1
    labels = {}
    for pair_id, counts in votes.items():
        (top, n), *rest = counts.most_common()
        labels[pair_id] = "tie" if rest and rest[0][1] == n else top
    return labels
