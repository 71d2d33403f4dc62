"""Labels from people, wherever they are made: imported from JSONL/CSV, typed in the terminal review,
gold sets; the judge's agreement with them per principle, and the trust rule built on it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scripted_judges import ScriptedJudge
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from constitution.loader import load_constitution
from flows.cli import app
from flows.config import RoundConfig
from flows.judging import trusted_principles
from review.agreement import agreement_with_people
from review.gold import part_of, store_gold
from review.imports import LabelFileError, import_labels
from stats.agreement import label_agreement
from store.db import Store
from store.rows import ReviewQueueRow, ReviewRow, RoundRow

from helpers import seed_pairs

CONSTITUTION = """
name: labels
principles:
  - id: helpful
    text: The reply helps the customer.
  - id: polite
    text: The reply is polite.
  - id: short
    text: At most 5 words.
    check: {max_words: 5}
"""


@pytest.fixture()
def constitution(tmp_path):
    (tmp_path / "c.yaml").write_text(CONSTITUTION)
    return load_constitution(str(tmp_path / "c.yaml"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stored_labels(store: Store) -> list[tuple]:
    rows = store._select(ReviewRow, "TRUE", [], "review_id")
    return sorted((r.pair_id, r.reviewer, r.winner, r.principle or "") for r in rows)


def test_labels_import_from_jsonl_and_csv_by_pair_or_by_texts_in_either_order(tmp_path, constitution):
    with Store(tmp_path / "s.duckdb") as store:
        pairs = seed_pairs(store, [(f"question {i}", f"answer A{i}", f"answer B{i}") for i in range(4)])
        jsonl = write_jsonl(tmp_path / "labels.jsonl", [
            {"pair_id": pairs[0].pair_id, "winner": "a", "reviewer": "ann", "rationale": "clearer"},
            {"prompt": "question 1", "text_a": "answer A1", "text_b": "answer B1", "winner": "b", "principle": "polite",
             "reviewer": "ann"},
            # the same pair with its replies the other way round: the label is flipped to the pair's own a/b
            {"prompt": "question 2", "text_a": "answer B2", "text_b": "answer A2", "winner": "a", "reviewer": "ann"},
        ])
        found = import_labels(store, jsonl, constitution)
        assert (found.rows, found.stored, found.pairs, found.principles) == (3, 3, 3, ["polite"])
        assert stored_labels(store) == sorted([(pairs[0].pair_id, "ann", "a", ""), (pairs[1].pair_id, "ann", "b", "polite"),
                                               (pairs[2].pair_id, "ann", "b", "")])
        assert import_labels(store, jsonl, constitution).stored == 0  # the same file again: nothing new

        with (tmp_path / "labels.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["pair_id", "prompt", "text_a", "text_b", "winner", "principle", "reviewer", "rationale"])
            writer.writeheader()
            writer.writerow({"pair_id": pairs[3].pair_id, "winner": "tie", "principle": "helpful", "reviewer": "bo",
                             "rationale": "both, fine"})
        assert import_labels(store, tmp_path / "labels.csv", constitution).stored == 1
        assert (pairs[3].pair_id, "bo", "tie", "helpful") in stored_labels(store)


@pytest.mark.parametrize("rows, expected", [
    ([{"pair_id": "PAIR0", "winner": "a", "reviewer": "x"}, {"pair_id": "nope", "winner": "a", "reviewer": "x"}],
     "line 2: pair_id: no pair 'nope'"),
    ([{"pair_id": "PAIR0", "winner": "left", "reviewer": "x"}], "line 1: winner: Input should be 'a', 'b' or 'tie'"),
    ([{"pair_id": "PAIR0", "winner": "a"}], "line 1: reviewer: missing"),
    ([{"pair_id": "PAIR0", "winner": "a", "reviewer": "x", "principle": "kind"}], "line 1: principle: 'kind' is not a principle"),
    ([{"prompt": "question 0", "text_a": "answer A0", "winner": "a", "reviewer": "x"}], "line 1: row: Value error, give pair_id"),
    ([{"prompt": "question 0", "text_a": "answer A0", "text_b": "something else", "winner": "a", "reviewer": "x"}],
     "line 1: no stored pair has this prompt and these two replies"),
    ([{"pair_id": "PAIR0", "winner": "a", "reviewer": "x"}, {"pair_id": "PAIR0", "winner": "b", "reviewer": "x"}],
     "line 2: x labelled this pair differently on line 1"),
    ([{"pair_id": "PAIR0", "winner": "a", "reviewer": "x", "score": 3}], "line 1: score: Extra inputs are not permitted"),
])
def test_a_bad_row_is_named_by_its_line_and_nothing_is_stored(tmp_path, constitution, rows, expected):
    with Store(tmp_path / "s.duckdb") as store:
        pairs = seed_pairs(store, [(f"question {i}", f"answer A{i}", f"answer B{i}") for i in range(2)])
        rows = [{k: (pairs[0].pair_id if v == "PAIR0" else v) for k, v in r.items()} for r in rows]
        path = write_jsonl(tmp_path / "bad.jsonl", [{"pair_id": pairs[1].pair_id, "winner": "a", "reviewer": "x"}] + rows)
        with pytest.raises(LabelFileError) as info:
            import_labels(store, path, constitution)
        shifted = expected.replace("line 2", "line 3").replace("line 1", "line 2")  # the good first row
        assert str(path) in str(info.value) and shifted in str(info.value)
        assert stored_labels(store) == []  # the good first row was not stored either


def test_the_cli_imports_and_a_malformed_file_exits_2_naming_the_line(tmp_path):
    (tmp_path / "c.yaml").write_text(CONSTITUTION)
    (tmp_path / "rlaif.yaml").write_text(f"constitution: {tmp_path / 'c.yaml'}\nstore: {{path: {tmp_path / 's.duckdb'}}}\n")
    with Store(tmp_path / "s.duckdb") as store:
        pairs = seed_pairs(store, [("q", "A", "B")])
    good = write_jsonl(tmp_path / "good.jsonl", [{"pair_id": pairs[0].pair_id, "winner": "b", "principle": "helpful"}])
    done = CliRunner().invoke(app, ["review", "import", str(good), "--reviewer", "cy", "--config", str(tmp_path / "rlaif.yaml")])
    assert done.exit_code == 0 and "1 new reviews stored" in done.output, done.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pair_id": pairs[0].pair_id, "winner": "a", "reviewer": "cy"}) + "\n{not json\n")
    refused = CliRunner().invoke(app, ["review", "import", str(bad), "--config", str(tmp_path / "rlaif.yaml")])
    assert refused.exit_code == 2 and "line 2: not valid JSON" in refused.output, refused.output
    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        assert stored_labels(store) == [(pairs[0].pair_id, "cy", "b", "helpful")]


def test_imported_labels_equal_labels_typed_in_the_terminal_review(tmp_path):
    """A scripted reviewer types labels (with the principle that decided) in `rlaif review next`; the
    same labels, written to a file as another tool would export them, import to the same reviews."""
    (tmp_path / "c.yaml").write_text(CONSTITUTION)
    typed_db, imported_db = tmp_path / "typed.duckdb", tmp_path / "imported.duckdb"
    for db in (typed_db, imported_db):
        with Store(db) as store:
            pairs = seed_pairs(store, [(f"q{i}", f"A{i}", f"B{i}") for i in range(3)])
            store.append([RoundRow(round_id="r", round_index=1, status="running", policy_id="m", constitution_hash="c",
                                   seed=0, config_json={})])
            store.append([ReviewQueueRow(pair_id=p.pair_id, round_id="r", reasons=["random"]) for p in pairs])
    config = tmp_path / "rlaif.yaml"
    config.write_text(f"constitution: {tmp_path / 'c.yaml'}\n")
    token = CliRunner().invoke(app, ["review", "add-reviewer", "dana", "--db", str(typed_db)]).output.split()[-1]
    # pair by pair: response 1, principle 2 (polite), a reason; response 2, no principle; tie, principle 1 (helpful)
    keys = "1\n2\nnicer\n2\n\n\n3\n1\nsame help\n"
    typed = CliRunner().invoke(app, ["review", "next", "--round", "1", "--db", str(typed_db), "--config", str(config)],
                               input=keys, env={"RLAIF_REVIEWER_TOKEN": token})
    assert typed.exit_code == 0 and "nothing left for you" in typed.output, typed.output
    with Store(typed_db, read_only=True) as store:
        reviews = store._select(ReviewRow, "TRUE", [], "review_id")
        assert len(reviews) == 5 and {r.principle for r in reviews} == {None, "polite", "helpful"}
        export = [{"pair_id": r.pair_id, "winner": r.winner, "principle": r.principle, "reviewer": r.reviewer,
                   "rationale": r.rationale} for r in reviews]
        typed_labels = stored_labels(store)
    write_jsonl(tmp_path / "export.jsonl", export)
    done = CliRunner().invoke(app, ["review", "import", str(tmp_path / "export.jsonl"), "--db", str(imported_db),
                                    "--config", str(config)])
    assert done.exit_code == 0, done.output
    with Store(imported_db, read_only=True) as store:
        assert stored_labels(store) == typed_labels


def test_label_agreement_matches_sklearn_and_its_interval_holds_it():
    rng = np.random.default_rng(0)
    people = list(rng.choice(["a", "b", "tie"], size=80, p=[0.4, 0.4, 0.2]))
    judge = [p if rng.random() < 0.7 else str(rng.choice(["a", "b", "tie"])) for p in people]
    found = label_agreement(judge, people)
    assert found.kappa == pytest.approx(cohen_kappa_score(judge, people))
    assert found.kappa_low < found.kappa < found.kappa_high and found.kappa_low > 0
    differ = [(j, p) for j, p in zip(judge, people) if p != "tie"]
    assert found.true_positive_rate == pytest.approx(sum(j == p for j, p in differ) / len(differ))
    ties = [j for j, p in zip(judge, people) if p == "tie"]
    assert found.false_positive_rate == pytest.approx(sum(j != "tie" for j in ties) / len(ties))
    coin = np.random.default_rng(1)
    chance = label_agreement(list(coin.choice(["a", "b"], size=80)), list(coin.choice(["a", "b"], size=80)))
    assert chance.kappa_low < 0 < chance.kappa_high  # a judge at chance: the interval holds 0


def gold_file(path, n: int, said_on_helpful):
    """n pairs labelled on `helpful` (and overall) by a gold reader; `said_on_helpful(i)` -> a | b | tie."""
    rows = []
    for i in range(n):
        pair = {"prompt": f"customer question {i}", "text_a": f"reply one to {i}", "text_b": f"reply two to {i}"}
        rows.append({**pair, "winner": said_on_helpful(i), "principle": "helpful", "reviewer": "gold", "rationale": f"reason {i}"})
        rows.append({**pair, "winner": "a", "reviewer": "gold"})
    return write_jsonl(path, rows)


def truth(i: int) -> str:
    return "a" if i % 3 else "b"


@pytest.mark.parametrize("judge_agrees", [True, False])
def test_the_trust_rule_switches_a_principle_on_and_off_by_its_agreement_with_people(tmp_path, constitution, judge_agrees):
    """A judge measured on a gold set whose reader it agrees with, or contradicts, on `helpful`:
    agreement with people decides `helpful`, overriding the synthetic qualification; `polite`, which
    no one labelled, stays with the qualification and is "not yet checked against people"."""
    path = gold_file(tmp_path / "gold.jsonl", 40, lambda i: "tie" if i % 5 == 0 else truth(i))

    def script(pair):
        i = int(pair.prompt.split()[-1])
        return truth(i) if judge_agrees else {"a": "b", "b": "a"}[truth(i)]

    config = RoundConfig.model_validate({"constitution": str(tmp_path / "c.yaml"), "review": {"gold": [str(path)],
                                         "min_reviewed": 10, "min_kappa": 0.2},
                                         "judge": {"qualify": False, "examples_from_people": 0},
                                         "store": {"path": str(tmp_path / "s.duckdb")}})
    judge = ScriptedJudge("agrees" if judge_agrees else "contradicts", script)
    with Store(config.store) as store:
        trusted, result, _ = trusted_principles(store, config, constitution, judge)
        assert result is None  # qualification is off here: `polite` counts by default, unchecked
        assert ("helpful" in trusted.qualified) is judge_agrees and ("helpful" in trusted.unqualified) is not judge_agrees
        assert "helpful" in trusted.people and "pairs labelled by reviewers" in trusted.people["helpful"]
        assert trusted.unchecked == ["polite"] and "polite (not yet checked against people)" in trusted.describe()
        # only the measuring part is evidence: the teaching part's pairs are left out
        measuring = sum(part_of(f"customer question {i}", f"reply one to {i}", f"reply two to {i}") == "measure"
                        for i in range(40))
        gold = store_gold(store, str(path), constitution)
        teach = frozenset(g.pair.pair_id for g in gold if g.part == "teach")
        assert 0 < len(teach) < 40
        assert store.verdicts(teach, judge.judge_id, constitution.content_hash) == {}  # not teaching: the judge never saw them
        assert agreement_with_people(store, judge.judge_id, constitution.content_hash, teach)["helpful"].n == measuring
        assert trusted.people["helpful"].endswith(f"on {measuring} pairs labelled by reviewers")


def test_examples_come_from_disagreements_in_the_teaching_part_and_are_never_evidence(tmp_path, constitution):
    """A judge that contradicts people on every third pair: its worked examples are teaching-part pairs
    it got wrong (one per principle), the taught judge is a judge of its own, and neither the teaching
    part nor the taught pairs count as evidence of its agreement with people."""
    path = gold_file(tmp_path / "gold.jsonl", 40, truth)

    def script(pair):
        i = int(pair.prompt.split()[-1])
        return {"a": "b", "b": "a"}[truth(i)] if i % 3 == 0 else truth(i)

    config = RoundConfig.model_validate({"constitution": str(tmp_path / "c.yaml"), "review": {"gold": [str(path)]},
                                         "judge": {"qualify": False, "examples_from_people": 1},
                                         "store": {"path": str(tmp_path / "s.duckdb")}})
    base = ScriptedJudge("sometimes-wrong", script)
    with Store(config.store) as store:
        trusted, _, _ = trusted_principles(store, config, constitution, base)
        (example,) = trusted.taught  # one per principle people labelled: only `helpful`
        assert example.principle == "helpful"
        i = int(example.message.split()[-1])
        assert i % 3 == 0 and part_of(example.message, f"reply one to {i}", f"reply two to {i}") == "teach"
        assert {example.chosen, example.rejected} == {f"reply one to {i}", f"reply two to {i}"}
        assert example.chosen == (f"reply one to {i}" if truth(i) == "a" else f"reply two to {i}")
        taught = base.with_taught(trusted.taught)
        assert taught.judge_id != base.judge_id
        # the evidence is the taught judge's verdicts on the measuring part only
        measuring = sum(part_of(f"customer question {j}", f"reply one to {j}", f"reply two to {j}") == "measure"
                        for j in range(40))
        assert trusted.people["helpful"].endswith(f"on {measuring} pairs labelled by reviewers")
        assert example.pair_id not in store.verdicts([example.pair_id], taught.judge_id, constitution.content_hash)


def test_a_local_judge_taught_by_people_has_its_own_id_and_is_not_served_from_the_old_cache(tiny_model, tmp_path):
    from judges.local_logprob import LocalLogprobJudge
    from judges.pointwise import Taught
    from judges.stage import judge_pairs

    constitution = load_constitution("bundled:support")
    model, tokenizer = tiny_model
    base = LocalLogprobJudge(model, tokenizer, "tiny", batch_size=4)
    with Store(tmp_path / "j.duckdb") as store:
        pairs = seed_pairs(store, [(f"Where is order {i}?", f"It ships tomorrow, order {i}.", f"No idea {i}.") for i in range(2)])
        judge_pairs(store, base, constitution, pairs)
        before = store.count_rows()["judgments"]
        taught = base.with_taught([Taught(pair_id="x", principle="honest", message="Did you refund me?",
                                          chosen="I will check your refund now.", rejected="I refunded $500 yesterday.")])
        assert taught.judge_id.startswith(base.judge_id + "+taught:") and taught.judge_id != base.judge_id
        assert base.with_taught([]).judge_id == base.judge_id
        verdicts = judge_pairs(store, taught, constitution, pairs)
        assert store.count_rows()["judgments"] == before + 4  # asked again: 2 pairs x 2 orders, nothing from the cache
        assert {v.judge_id for v in verdicts.values()} == {taught.judge_id}
