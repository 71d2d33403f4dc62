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
import unicodedata
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from review.labels import review_id
from review.text_safety import hidden_characters, look_alike, scripts
from store.db import Store
from store.ids import stable_int
from store.rows import CompletionRow, PairRow, PromptRow, ReviewerRow, ReviewRow, ReviewSessionRow, RoundRow, utcnow

Choice = Literal["left", "right", "tie", "skip"]
MAX_RATIONALE = 4000  # characters


class ReviewError(ValueError):
    """Bad review input (unknown round or pair, a name already taken ...); the message says which."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_reviewer(store: Store, name: str) -> str:
    """Register a reviewer; returns their token (shown once: only its hash is stored).

    The name is NFKC-normalised; one that mixes scripts, or looks like an existing reviewer's
    name (case, look-alike letters), is refused, so a label's name says who gave it. A revoked
    reviewer added again gets a new token.
    """
    name = unicodedata.normalize("NFKC", name)
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ReviewError(f"reviewer name {name!r}: use letters, digits, '-', '_' or '.'")
    if len(scripts(name)) > 1:
        raise ReviewError(f"reviewer name {name!r} mixes scripts ({', '.join(sorted(scripts(name)))}): use one")
    token = secrets.token_urlsafe(24)
    existing = store.by_ids(ReviewerRow, [name]).get(name)
    if existing is not None:
        if existing.revoked_at is None:
            raise ReviewError(f"reviewer {name!r} already exists")
        store.reissue_reviewer_token(name, token_sha256(token))
        return token
    twin = next((r.reviewer_id for r in store.reviewers() if look_alike(r.reviewer_id, name)), None)
    if twin is not None:
        raise ReviewError(f"reviewer name {name!r} looks like the existing reviewer {twin!r}: choose another")
    store.append([ReviewerRow(reviewer_id=name, token_sha256=token_sha256(token))])
    return token


def revoke_reviewer(store: Store, name: str) -> None:
    """Stop `name`'s token and log out every browser they are logged in with (their labels stay)."""
    if name not in store.by_ids(ReviewerRow, [name]):
        raise ReviewError(f"there is no reviewer {name!r}")
    store.revoke_reviewer(name)


def reviewer_for_token(store: Store, token: str | None) -> ReviewerRow | None:
    """The reviewer of a token, unless it was revoked."""
    return store.reviewer_by_token(token_sha256(token)) if token else None


# ---- browser sessions -------------------------------------------------------------------------------
def start_session(store: Store, reviewer_id: str, ttl_s: int) -> str:
    """Log a browser in: returns the session secret for its cookie (only the hash is stored)."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    store.append([ReviewSessionRow(session_sha256=token_sha256(secret), reviewer_id=reviewer_id, created_at=now,
                                   expires_at=now + timedelta(seconds=ttl_s))])
    return secret


def reviewer_for_session(store: Store, secret: str | None) -> str | None:
    """The reviewer a session cookie belongs to; None once it expired, was logged out or revoked."""
    row = store.review_session(token_sha256(secret)) if secret else None
    return row.reviewer_id if row else None


def end_session(store: Store, secret: str) -> None:
    store.end_review_session(token_sha256(secret))


def csrf_token(secret: str) -> str:
    """The session's CSRF token, put in every form the page serves. Derived from the session secret
    (a page on another origin can make the browser send the cookie but cannot read this), and
    revealing nothing about it (a hash)."""
    return hashlib.sha256(b"rlaif-review-csrf\0" + secret.encode()).hexdigest()


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
    # where the texts hold characters that render invisibly (bidi overrides, zero-width ...): shown
    # as markers on the page, and the pair flagged
    hidden: dict[str, list[str]] = {}   # "prompt" | "left" | "right" -> ["U+202E", ...]


class QueueProgress(BaseModel):
    round_index: int
    done: int
    total: int
    mine: int        # labels (not skips) this reviewer gave this round


def round_or_error(store: Store, round_index: int) -> RoundRow:
    rnd = store.round_by_index(round_index)
    if rnd is None:
        raise ReviewError(f"there is no round {round_index} in {store.name}")
    return rnd


def labels_per_pair(reviews: list[ReviewRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reviews:
        if r.winner != "skip" and r.principle is None:
            counts[r.pair_id] = counts.get(r.pair_id, 0) + 1
    return counts


def queue_progress(store: Store, round_index: int, reviewer: str, reviews_per_pair: int) -> QueueProgress:
    rnd = round_or_error(store, round_index)
    queue = store.review_queue(rnd.round_id)
    reviews = store.reviews_of_round(rnd.round_id)
    counts = labels_per_pair(reviews)
    return QueueProgress(round_index=round_index, total=len(queue),
                    done=sum(counts.get(q.pair_id, 0) >= reviews_per_pair for q in queue),
                    mine=sum(r.reviewer == reviewer and r.winner != "skip" and r.principle is None for r in reviews))


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
    order = shown_order(pair_id, reviewer)
    left, right = (a, b) if order == "ab" else (b, a)
    hidden = {name: found for name, text in (("prompt", prompt.text), ("left", left), ("right", right))
              if (found := hidden_characters(text))}
    return ReviewItem(round_index=round_index, pair_id=pair_id, prompt=prompt.text, tags=prompt.tags, left=left,
                      right=right, shown_order=order, hidden=hidden,
                      done=sum(counts.get(q.pair_id, 0) >= reviews_per_pair for q in queue), total=len(queue))


def shown_order(pair_id: str, reviewer: str) -> Literal["ab", "ba"]:
    """Which completion a reviewer sees on the left: drawn per (pair, reviewer), decided here only."""
    return "ab" if stable_int("shown-order", pair_id, reviewer) % 2 == 0 else "ba"


def record_review(store: Store, round_index: int, reviewer: str, pair_id: str, choice: str, rationale: str | None,
                  reviews_per_pair: int, shown: str | None = None, principle: str | None = None,
                  principles: frozenset[str] = frozenset()) -> ReviewRow:
    """Store a label; `choice` is what the reviewer picked on screen, turned into the pair's a/b.

    Only the pair this reviewer is being shown counts: the queue's next pair for them, which still
    needs labels. The order it was shown in is recomputed here, never taken from the client;
    `shown`, if the client sends it, must agree (a page from before an undo, say, is refused).
    `principle` (one of `principles`, optional): the principle that decided; the same choice is then
    also stored as the reviewer's label on that principle.
    """
    if principle is not None and principle not in principles:
        raise ReviewError(f"principle {principle!r} is not one of the constitution's ({', '.join(sorted(principles))})")
    rnd = round_or_error(store, round_index)
    if choice not in ("left", "right", "tie", "skip"):
        raise ReviewError(f"choice must be left, right, tie or skip, not {choice!r}")
    current = next_item(store, round_index, reviewer, reviews_per_pair)
    if current is None or current.pair_id != pair_id:
        if pair_id not in {q.pair_id for q in store.review_queue(rnd.round_id)}:
            raise ReviewError(f"pair {pair_id!r} is not in round {round_index}'s review queue")
        raise ReviewError(f"pair {pair_id!r} is not the pair shown to you now (it was labelled already, or another "
                          "pair is next): nothing stored; reload the page")
    order = shown_order(pair_id, reviewer)
    if shown is not None and shown != order:
        raise ReviewError(f"shown_order {shown!r} is not the order pair {pair_id!r} was shown to you in")
    rationale = (rationale or "").strip()
    if len(rationale) > MAX_RATIONALE:
        raise ReviewError(f"the rationale is {len(rationale)} characters long; the limit is {MAX_RATIONALE}: nothing "
                          "was stored, shorten it and submit again")
    left, right = ("a", "b") if order == "ab" else ("b", "a")
    winner = {"left": left, "right": right, "tie": "tie", "skip": "skip"}[choice]
    row = ReviewRow(review_id=review_id(pair_id, reviewer), pair_id=pair_id, reviewer=reviewer,
                    winner=winner, rationale=rationale or None, shown_order=order)
    decided_by = [] if principle is None or winner == "skip" else [
        row.model_copy(update={"review_id": review_id(pair_id, reviewer, principle), "principle": principle})]
    store.append([row, *decided_by])
    return row


def undo_last(store: Store, round_index: int, reviewer: str) -> ReviewRow | None:
    """Remove this reviewer's latest review in the round, with the principle label stored with it
    (never anyone else's)."""
    rnd = round_or_error(store, round_index)
    mine = [r for r in store.reviews_of_round(rnd.round_id) if r.reviewer == reviewer and r.principle is None]
    if not mine:
        return None
    last = max(mine, key=lambda r: r.created_at)
    for r in store.reviews_of_round(rnd.round_id):
        if r.reviewer == reviewer and r.pair_id == last.pair_id:
            store.delete_review(r.review_id)
    return last
