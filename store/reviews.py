"""Queries of people's side: the review queue, reviewers and their sessions, labels, agreement."""

from __future__ import annotations

from collections.abc import Iterable

from store.connection import Connection
from store.rows import AgreementRow, ReviewerRow, ReviewQueueRow, ReviewRow, ReviewSessionRow, utcnow


class ReviewQueries(Connection):
    """The review queue, reviewers, sessions, reviews (labels), judge-human agreement."""

    def review_queue(self, round_id: str) -> list[ReviewQueueRow]:
        return self._select(ReviewQueueRow, "round_id = ?", [round_id], "pair_id")

    def reviewer_by_token(self, token_sha256: str) -> ReviewerRow | None:
        """The reviewer whose token this is, unless revoked."""
        found = self._select(ReviewerRow, "token_sha256 = ? AND revoked_at IS NULL", [token_sha256])
        return found[0] if found else None

    def reviewers(self) -> list[ReviewerRow]:
        return self._select(ReviewerRow, order="reviewer_id")

    def review_session(self, session_sha256: str) -> ReviewSessionRow | None:
        """A live session: not expired, and its reviewer not revoked."""
        found = self._select(
            ReviewSessionRow, "session_sha256 = ? AND expires_at > ? AND reviewer_id IN "
            "(SELECT reviewer_id FROM reviewers WHERE revoked_at IS NULL)", [session_sha256, utcnow()])
        return found[0] if found else None

    def end_review_session(self, session_sha256: str) -> None:
        """Logout: the session is gone, so its cookie is worth nothing even if it was copied."""
        self._write("DELETE FROM review_sessions WHERE session_sha256 = ?", [session_sha256])

    def revoke_reviewer(self, reviewer_id: str) -> None:
        """Stop a reviewer's token and end their sessions (their reviews stay)."""
        def revoke() -> None:
            self.con.execute("UPDATE reviewers SET revoked_at = ? WHERE reviewer_id = ?", [utcnow(), reviewer_id])
            self.con.execute("DELETE FROM review_sessions WHERE reviewer_id = ?", [reviewer_id])
        self._transact(revoke)

    def reissue_reviewer_token(self, reviewer_id: str, token_sha256: str) -> None:
        """A revoked reviewer gets a new token (the old one stays dead: its hash is replaced)."""
        self._write("UPDATE reviewers SET token_sha256 = ?, revoked_at = NULL WHERE reviewer_id = ?",
                         [token_sha256, reviewer_id])

    def reviews_of_round(self, round_id: str) -> list[ReviewRow]:
        return self._select(ReviewRow, "pair_id IN (SELECT pair_id FROM review_queue WHERE round_id = ?)", [round_id],
                            "created_at, review_id")

    def reviews_of_pairs(self, pair_ids: Iterable[str]) -> list[ReviewRow]:
        return self._select(ReviewRow, "pair_id IN (SELECT unnest(?))", [list(pair_ids)], "review_id")

    def principle_reviews(self) -> list[ReviewRow]:
        """Every label about one principle (not skips), of any round or gold set."""
        return self._select(ReviewRow, "principle IS NOT NULL AND winner <> 'skip'", [], "review_id")

    def delete_review(self, review_id: str) -> None:
        """A reviewer's undo: the one row the product ever removes (it was a human's slip, not data)."""
        self._write("DELETE FROM reviews WHERE review_id = ?", [review_id])

    def agreement(self, round_id: str) -> list[AgreementRow]:
        """The latest agreement rows of a round (one computation per judge and constitution)."""
        return self._select(
            AgreementRow,
            "round_id = ? AND computed_at = (SELECT max(computed_at) FROM agreement WHERE round_id = ?)",
            [round_id, round_id], "scope, subject")
