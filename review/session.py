"""Reviewing, shared by the web page and the terminal loop: who is reviewing, what they see next,
what their label means.

A reviewer sees one queued pair at a time: the prompt and the two completions in an order drawn
per (pair, reviewer), never the judge's verdict. Their choice is stored in the pair's own a/b
terms together with the order they saw. A pair leaves a reviewer's queue once they labelled or
skipped it, and leaves everyone's once it has `reviews_per_pair` labels.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

from pydantic import BaseModel

from store.db import Store
from store.ids import stable_id, stable_int
from store.rows import CompletionRow, PairRow, PromptRow, ReviewerRow, ReviewRow, RoundRow

Choice = Literal["left", "right", "tie", "skip"]


class ReviewError(ValueError):
    """Bad review input (unknown round or pair, a name already taken ...); the message says which."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_reviewer(store: Store, name: str) -> str:
    """Register a reviewer; returns their token (shown once: only its hash is stored)."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ReviewError(f"reviewer name {name!r}: use letters, digits, '-', '_' or '.'")
    if store.by_ids(ReviewerRow, [name]):
        raise ReviewError(f"reviewer {name!r} already exists")
    token = secrets.token_urlsafe(24)
    store.append([ReviewerRow(reviewer_id=name, token_sha256=token_sha256(token))])
    return token


def reviewer_for_token(store: Store, token: str | None) -> ReviewerRow | None:
    return store.reviewer_by_token(token_sha256(token)) if token else None


class ReviewItem(BaseModel):
    round_index: int
    pair_id: str
    prompt: str
    tags: list[str]
    left: str
    right: str
    shown_order: Literal["ab", "ba"]  # "ba": b is on the left
    done: int        # pairs with enough labels, this round
    total: int       # pairs queued this round


class Progress(BaseModel):
    round_index: int
    done: int
    total: int
    mine: int        # labels (not skips) this reviewer gave this round


def round_or_error(store: Store, round_index: int) -> RoundRow:
    rnd = store.round_by_index(round_index)
    if rnd is None:
        raise ReviewError(f"there is no round {round_index} in {store.path}")
    return rnd


def labels_per_pair(reviews: list[ReviewRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reviews:
        if r.winner != "skip":
            counts[r.pair_id] = counts.get(r.pair_id, 0) + 1
    return counts


def progress(store: Store, round_index: int, reviewer: str, reviews_per_pair: int) -> Progress:
    rnd = round_or_error(store, round_index)
    queue = store.review_queue(rnd.round_id)
    reviews = store.reviews_of_round(rnd.round_id)
    counts = labels_per_pair(reviews)
    return Progress(round_index=round_index, total=len(queue),
                    done=sum(counts.get(q.pair_id, 0) >= reviews_per_pair for q in queue),
                    mine=sum(r.reviewer == reviewer and r.winner != "skip" for r in reviews))


def next_item(store: Store, round_index: int, reviewer: str, reviews_per_pair: int) -> ReviewItem | None:
    """The next pair this reviewer has not seen and that still needs labels (None: nothing left)."""
    rnd = round_or_error(store, round_index)
    queue = store.review_queue(rnd.round_id)
    reviews = store.reviews_of_round(rnd.round_id)
    counts = labels_per_pair(reviews)
    seen = {r.pair_id for r in reviews if r.reviewer == reviewer}
    open_pairs = [q.pair_id for q in queue if q.pair_id not in seen and counts.get(q.pair_id, 0) < reviews_per_pair]
    if not open_pairs:
        return None
    pair_id = min(open_pairs, key=lambda p: stable_int("review-order", rnd.round_id, p))
    pair = store.by_ids(PairRow, [pair_id])[pair_id]
    texts = store.by_ids(CompletionRow, [pair.completion_a, pair.completion_b])
    prompt = store.by_ids(PromptRow, [pair.prompt_id])[pair.prompt_id]
    a, b = texts[pair.completion_a].text, texts[pair.completion_b].text
    shown_order = "ab" if stable_int("shown-order", pair_id, reviewer) % 2 == 0 else "ba"
    left, right = (a, b) if shown_order == "ab" else (b, a)
    return ReviewItem(round_index=round_index, pair_id=pair_id, prompt=prompt.text, tags=prompt.tags, left=left,
                      right=right, shown_order=shown_order,
                      done=sum(counts.get(q.pair_id, 0) >= reviews_per_pair for q in queue), total=len(queue))


def record_review(store: Store, round_index: int, reviewer: str, pair_id: str, shown_order: str, choice: str,
                  rationale: str | None) -> ReviewRow:
    """Store a label; `choice` is what the reviewer picked on screen, turned into the pair's a/b."""
    rnd = round_or_error(store, round_index)
    if pair_id not in {q.pair_id for q in store.review_queue(rnd.round_id)}:
        raise ReviewError(f"pair {pair_id!r} is not in round {round_index}'s review queue")
    if shown_order not in ("ab", "ba"):
        raise ReviewError(f"shown_order must be ab or ba, not {shown_order!r}")
    if choice not in ("left", "right", "tie", "skip"):
        raise ReviewError(f"choice must be left, right, tie or skip, not {choice!r}")
    if any(r.pair_id == pair_id and r.reviewer == reviewer for r in store.reviews_of_round(rnd.round_id)):
        raise ReviewError(f"{reviewer} already reviewed pair {pair_id}; undo it first")
    left, right = ("a", "b") if shown_order == "ab" else ("b", "a")
    winner = {"left": left, "right": right, "tie": "tie", "skip": "skip"}[choice]
    row = ReviewRow(review_id=stable_id("review", pair_id, reviewer), pair_id=pair_id, reviewer=reviewer,
                    winner=winner, rationale=(rationale or "").strip()[:4000] or None, shown_order=shown_order)
    store.append([row])
    return row


def undo_last(store: Store, round_index: int, reviewer: str) -> ReviewRow | None:
    """Remove this reviewer's latest review in the round (never anyone else's)."""
    rnd = round_or_error(store, round_index)
    mine = [r for r in store.reviews_of_round(rnd.round_id) if r.reviewer == reviewer]
    if not mine:
        return None
    last = max(mine, key=lambda r: r.created_at)
    store.delete_review(last.review_id)
    return last
