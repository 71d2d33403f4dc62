"""Review logic: human labels, their override of the judge, judge-human agreement, the reviewing session."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import cohen_kappa_score

from review.agreement import check_agreement, measure_agreement
from review.labels import human_labels
from review.session import (
    ReviewError,
    add_reviewer,
    end_session,
    next_item,
    record_review,
    reviewer_for_session,
    reviewer_for_token,
    revoke_reviewer,
    start_session,
    undo_last,
)
from review.text_safety import hidden_characters, visible_segments
from stats.agreement import cohen_kappa
from store.db import Store
from store.rows import PairRecord, ReviewQueueRow, ReviewRow, RoundRow
from training.data import select_preferences

from helpers import seed_pairs


@pytest.mark.parametrize("seed", range(6))
def test_kappa_matches_sklearn(seed):
    rng = random.Random(seed)
    labels = ["a", "b", "tie"][: 2 + seed % 2]
    judge = [rng.choice(labels) for _ in range(40)]
    human = [j if rng.random() < 0.6 else rng.choice(labels) for j in judge]
    assert cohen_kappa(judge, human) == pytest.approx(cohen_kappa_score(judge, human), abs=1e-12)


def review(pair_id: str, reviewer: str, winner: str) -> ReviewRow:
    return ReviewRow(review_id=f"{pair_id}-{reviewer}", pair_id=pair_id, reviewer=reviewer, winner=winner, shown_order="ab")


def test_human_label_is_the_majority_and_a_split_is_a_tie():
    reviews = [review("p1", "x", "a"), review("p1", "y", "a"), review("p1", "z", "b"),
               review("p2", "x", "a"), review("p2", "y", "b"),
               review("p3", "x", "skip"), review("p4", "x", "skip"), review("p4", "y", "tie")]
    assert human_labels(reviews) == {"p1": "a", "p2": "tie", "p4": "tie"}


def record(pair_id: str, winner: str | None, consistent: bool = True, votes: dict | None = None, tags=("billing",)) -> PairRecord:
    return PairRecord(pair_id=pair_id, prompt="q", prompt_tags=list(tags), text_a=f"A-{pair_id}", text_b=f"B-{pair_id}",
                      ids_a=[1], ids_b=[2], logp_a=-1.0, logp_b=-2.0,
                      verdict_status="ok" if winner else None, judge_winner=winner, consistent=consistent,
                      confidence=0.9, rationale="judge says", votes_json=votes or {})


def test_human_labels_override_the_judge_and_a_human_tie_drops_the_pair():
    records = [record("p1", "a"), record("p2", "a"), record("p3", "a"), record("p4", "b", consistent=False), record("p5", "b", consistent=False)]
    chosen = {r.pair_id: r for r in select_preferences(records, {"p2": "b", "p3": "tie", "p5": "a"})}
    assert set(chosen) == {"p1", "p2", "p5"}                      # p3: human tie; p4: judge orders disagree, no human
    assert (chosen["p1"].chosen_text, chosen["p1"].source) == ("A-p1", "judge")
    assert (chosen["p2"].chosen_text, chosen["p2"].source) == ("B-p2", "human")   # the human wins over the judge
    assert (chosen["p5"].chosen_text, chosen["p5"].source) == ("A-p5", "human")   # a human label rescues an untrusted pair
    assert (chosen["p5"].chosen_logp, chosen["p5"].rejected_logp) == (-1.0, -2.0)  # sampled log-probs follow the sides
    twice = select_preferences([record("p1", "a"), record("p1", "a").model_copy(update={"pair_id": "p9"})], {})
    assert [r.pair_id for r in twice] == ["p1"]  # the same preference twice counts once


def test_agreement_overall_per_principle_per_tag_and_the_gate():
    records = [record("p1", "a", votes={"honest": "a", "concise": "b"}), record("p2", "b", votes={"honest": "b", "concise": "n/a"}, tags=("safety",)),
               record("p3", "a", consistent=False, votes={"honest": "tie"}), record("p4", "a")]
    said = {("p1", "honest"): "a", ("p2", "honest"): "a", ("p3", "honest"): "tie", ("p1", "concise"): "a",
            ("p2", "concise"): "b"}
    rows = measure_agreement(records, {"p1": "a", "p2": "a", "p3": "tie"}, said, "r", "j", "c")
    by = {(r.scope, r.subject): r for r in rows}
    assert (by["overall", ""].n, by["overall", ""].accuracy) == (3, pytest.approx(2 / 3))   # p3: inconsistent judge = tie
    assert by["overall", ""].kappa == pytest.approx(cohen_kappa_score(["a", "b", "tie"], ["a", "a", "tie"]))
    # per principle: that principle's vote against what people said about that principle
    assert (by["principle", "honest"].n, by["principle", "honest"].accuracy) == (3, pytest.approx(2 / 3))
    assert by["principle", "honest"].true_positive_rate == 0.5 and by["principle", "honest"].false_positive_rate == 0.0
    assert (by["principle", "concise"].n, by["principle", "concise"].accuracy) == (1, 0.0)  # n/a votes are not counted
    assert (by["tag", "safety"].n, by["tag", "safety"].accuracy) == (1, 0.0)
    assert check_agreement(rows, min_reviewed=5, min_kappa=0.9, min_accuracy=0.9).passed  # too few reviews to judge
    refused = check_agreement(rows, min_reviewed=3, min_kappa=0.9, min_accuracy=0.5)
    assert not refused.passed and "review.min_kappa" in refused.reason and "review.min_accuracy" not in refused.reason


def test_reviewing_session_blind_order_undo_and_tokens(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        pairs = seed_pairs(store, [(f"q{i}", f"A{i}", f"B{i}") for i in range(4)])
        store.append([RoundRow(round_id="r", round_index=1, status="running", policy_id="m", constitution_hash="c", seed=0, config_json={})])
        store.append([ReviewQueueRow(pair_id=p.pair_id, round_id="r", reasons=["random"]) for p in pairs])
        alice = reviewer_for_token(store, add_reviewer(store, "alice"))
        bob_token = add_reviewer(store, "bob")
        assert reviewer_for_token(store, "not-a-token") is None and alice.reviewer_id == "alice"
        with pytest.raises(ReviewError, match="already exists"):
            add_reviewer(store, "alice")

        orders = set()
        for _ in range(4):
            item = next_item(store, 1, "alice", reviews_per_pair=2)
            orders.add(item.shown_order)
            row = record_review(store, 1, "alice", item.pair_id, "left", "left is better", 2, shown=item.shown_order)
            assert row.winner == ("a" if item.left.startswith("A") else "b")  # stored in the pair's own terms
        assert orders == {"ab", "ba"} and next_item(store, 1, "alice", 2) is None
        assert next_item(store, 1, "bob", 2) is not None  # two labels per pair: bob still has work
        last = undo_last(store, 1, "alice")
        assert next_item(store, 1, "alice", 2).pair_id == last.pair_id  # the undone pair comes back
        assert undo_last(store, 1, reviewer_for_token(store, bob_token).reviewer_id) is None  # bob cannot undo alice's
        with pytest.raises(ReviewError, match="not in round 1's review queue"):
            record_review(store, 1, "alice", "'; DROP TABLE reviews; --", "left", None, 2)
        assert len(store.reviews_of_round("r")) == 3


def test_a_label_counts_only_for_the_pair_shown_to_that_reviewer_in_the_order_shown(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        pairs = seed_pairs(store, [(f"q{i}", f"A{i}", f"B{i}") for i in range(3)])
        store.append([RoundRow(round_id="r", round_index=1, status="running", policy_id="m", constitution_hash="c", seed=0, config_json={})])
        store.append([ReviewQueueRow(pair_id=p.pair_id, round_id="r", reasons=["random"]) for p in pairs])
        for name in ("alice", "bob"):
            add_reviewer(store, name)
        shown = next_item(store, 1, "alice", reviews_per_pair=1)
        other = next(p.pair_id for p in pairs if p.pair_id != shown.pair_id)
        with pytest.raises(ReviewError, match="not the pair shown to you"):
            record_review(store, 1, "alice", other, "left", None, 1)   # queued, but not the one on alice's screen
        flipped = "ba" if shown.shown_order == "ab" else "ab"
        with pytest.raises(ReviewError, match="not the order"):
            record_review(store, 1, "alice", shown.pair_id, "left", None, 1, shown=flipped)
        assert store.reviews_of_round("r") == []

        bob_sees = next_item(store, 1, "bob", reviews_per_pair=1)
        assert bob_sees.pair_id == shown.pair_id                         # both were shown the same pair ...
        record_review(store, 1, "bob", bob_sees.pair_id, "tie", None, 1)
        with pytest.raises(ReviewError, match="not the pair shown to you"):  # ... it has its one label now
            record_review(store, 1, "alice", shown.pair_id, "left", None, 1)
        assert [(r.reviewer, r.winner) for r in store.reviews_of_round("r")] == [("bob", "tie")]


def test_sessions_end_at_logout_expiry_and_revocation_and_a_revoked_reviewer_can_get_a_new_token(tmp_path):
    with Store(tmp_path / "r.duckdb") as store:
        token = add_reviewer(store, "alice")
        first, second = start_session(store, "alice", 3600), start_session(store, "alice", 3600)
        assert reviewer_for_session(store, first) == reviewer_for_session(store, second) == "alice"
        end_session(store, first)
        assert reviewer_for_session(store, first) is None and reviewer_for_session(store, second) == "alice"
        assert reviewer_for_session(store, start_session(store, "alice", -1)) is None   # already expired

        revoke_reviewer(store, "alice")
        assert reviewer_for_session(store, second) is None and reviewer_for_token(store, token) is None
        with pytest.raises(ReviewError, match="no reviewer 'mallory'"):
            revoke_reviewer(store, "mallory")
        new_token = add_reviewer(store, "alice")
        assert reviewer_for_token(store, new_token).reviewer_id == "alice" and reviewer_for_token(store, token) is None


@pytest.mark.parametrize("name, reason", [
    ("аlice", "mixes scripts"),        # Cyrillic a + Latin lice
    ("јое", "looks like the existing reviewer 'joe'"),  # all Cyrillic
    # (Cyrillic palochka "аӏісе" is not caught: Unicode 16's confusables map palochka to i, not l)
    ("Alice", "looks like"), ("a1ice", "looks like"), ("ａｌｉｃｅ", "already exists"),  # fullwidth: NFKC is alice
    ("al ice", "use letters"),
])
def test_reviewer_names_that_look_like_another_are_refused(tmp_path, name, reason):
    with Store(tmp_path / "r.duckdb") as store:
        add_reviewer(store, "alice")
        add_reviewer(store, "joe")
        with pytest.raises(ReviewError, match=reason):
            add_reviewer(store, name)
        add_reviewer(store, "alicia")  # a different name is fine
        add_reviewer(store, "борис")  # so is one in a single other script


def test_hidden_characters_become_visible_markers():
    text = "Refund \u202eenod\u202c issued\u200b."
    assert hidden_characters(text) == ["U+202E", "U+202C", "U+200B"]
    segments = visible_segments(text)
    assert "".join(s.text for s in segments) == ("Refund [U+202E RIGHT-TO-LEFT OVERRIDE]enod[U+202C POP DIRECTIONAL "
                                                 "FORMATTING] issued[U+200B ZERO WIDTH SPACE].")
    assert [s.hidden for s in segments] == [False, True, False, True, False, True, False]
    assert visible_segments("plain") == [type(segments[0])(text="plain")] and hidden_characters("plain") == []


def test_rlaif_review_revoke(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    db = tmp_path / "r.duckdb"
    with Store(db) as store:
        token = add_reviewer(store, "alice")
    done = CliRunner().invoke(app, ["review", "revoke", "alice", "--db", str(db)])
    assert done.exit_code == 0 and "alice revoked" in done.output
    with Store(db) as store:
        assert reviewer_for_token(store, token) is None
    unknown = CliRunner().invoke(app, ["review", "revoke", "mallory", "--db", str(db)])
    assert unknown.exit_code == 2 and "no reviewer 'mallory'" in unknown.output
    missing = CliRunner().invoke(app, ["review", "revoke", "alice", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code == 2 and not (tmp_path / "none.duckdb").exists()


@pytest.mark.parametrize("name", [
    "ɑlice",         # LATIN SMALL LETTER ALPHA for a ("script a")
    "alıce",         # dotless i
    "alíce",         # an accented letter
    "alicé",
    "aIice",         # capital I for l
    "a1ice",         # digit 1 for l
    "ALICE",         # case
    "alice.",        # trailing punctuation
    "al-ice",
    "ａｌｉｃｅ",    # fullwidth compatibility forms
    "аlice",         # Cyrillic a
])
def test_look_alikes_of_an_existing_reviewer_are_refused(tmp_path, name):
    with Store(tmp_path / "r.duckdb") as store:
        add_reviewer(store, "alice")
        with pytest.raises(ReviewError, match="looks like the existing reviewer 'alice'|mixes scripts|'alice' already exists"):
            add_reviewer(store, name)
        assert add_reviewer(store, "alina")  # a different name is fine
