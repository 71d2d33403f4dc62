"""`rlaif export`: JSONL, Parquet and a Hugging Face `datasets` folder with a dataset card, with or
without per-pair provenance, from a real DuckDB store with a judged round (a scripted judge: the
export is under test, not the judge)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from scripted_judges import ScriptedJudge
from test_cli import one_error_line, run_rlaif
from typer.testing import CliRunner

from constitution.loader import load_constitution
from flows.cli import app
from flows.judging import qualification_row
from judges.qualification import PrincipleQualification, QualificationResult, gate
from judges.stage import judge_pairs
from review.agreement import AgreementCheck
from review.labels import review_id
from stats.agreement import LabelAgreement
from store.db import Store
from store.rows import ReviewQueueRow, ReviewRow, RoundRow, StageRunRow
from training.data import DataPolicy
from training.export import CardFacts, dataset_card, write_dataset

from helpers import seed_pairs

ROUND_ID = "round-0001"


def prefers_good(pair) -> str:
    """The judge prefers the reply that says "good"; two replies alike are a tie (dropped)."""
    if ("good" in pair.text_a) == ("good" in pair.text_b):
        return "tie"
    return "a" if "good" in pair.text_a else "b"


def sensitivity(value: float, texts: int = 3) -> PrincipleQualification:
    return PrincipleQualification(n=12, sensitivity=value, sensitivity_low=value - 0.1, sensitivity_high=min(1.0, value + 0.1),
                                  texts=texts, wrong=0.0, flip_rate=0.0, undecided=1 - value)


@pytest.fixture()
def judged_round(tmp_path) -> tuple[Path, str, str]:
    """A finished round: 5 pairs judged in both orders by a scripted judge under the gate the round
    recorded (honest and protects_customers not counted), one overall label that overrides the judge,
    one label on a principle and one skip. Returns (db, judge id, constitution hash)."""
    constitution = load_constitution("bundled:support")
    db = tmp_path / "r.duckdb"
    texts = [("Where is my order?", "A good answer | with a pipe.", "A poor answer."),
             ("Can I get a refund?", "No.", "Yes, a good refund within 30 days."),
             ("Reset my password", "A good reset link is on the way.", "Try again."),
             ("Hours?", "We open at 9, good day.", "Dunno."),
             ("Hello", "Hi there.", "Hello there.")]  # neither is good: a tie, not exported
    result = QualificationResult(judge_id="scripted:good", constitution_hash=constitution.content_hash, set_hash="s1",
                                 split="qualify", principles={"resolves_request": sensitivity(0.9), "honest": sensitivity(0.5),
                                                              "protects_customers": sensitivity(0.9, texts=1),
                                                              "courteous": sensitivity(0.8)},
                                 position_consistency=0.9, slot_bias=0.0, identical_tie_rate=1.0, pairs=40, requests=80,
                                 seconds=1.0, seconds_per_pair=0.01)
    people = {"courteous": LabelAgreement(n=3, accuracy=0.67, kappa=0.4, kappa_low=-0.2, kappa_high=1.0)}  # too few to decide
    trusted = gate(result, constitution, min_sensitivity=0.7, max_slot_bias=0.2, people=people)
    assert trusted.uncounted == {"honest", "protects_customers"}
    judge = ScriptedJudge("good", prefers_good)
    with Store(db) as store:
        pairs = seed_pairs(store, texts, round_id=ROUND_ID)
        store.append([qualification_row(result)])
        store.append([StageRunRow(round_id=ROUND_ID, stage="qualify", outcome_json=trusted.model_dump(mode="json"),
                                  host="test", pid=0)])
        judge_pairs(store, judge, constitution, pairs, uncounted=trusted.uncounted)
        store.append([RoundRow(round_id=ROUND_ID, round_index=1, status="finished", policy_id="m",
                               constitution_hash=constitution.content_hash, seed=0, config_json={}, judge_id=judge.judge_id,
                               summary_json={"agreement": AgreementCheck(passed=True, n=1, accuracy=0.0, kappa=0.0, reason=(
                                   "not checked: 1 reviewed pairs (< review.min_reviewed 5)")).model_dump()})])
        store.append([ReviewQueueRow(pair_id=p, round_id=ROUND_ID, reasons=["random"]) for p in ("pair0", "pair1")])
        store.append([
            ReviewRow(review_id=review_id("pair0", "alice"), pair_id="pair0", reviewer="alice", winner="b", shown_order="ab"),
            ReviewRow(review_id=review_id("pair1", "bob", "honest"), pair_id="pair1", reviewer="bob", winner="b",
                      shown_order="ba", principle="honest"),
            ReviewRow(review_id=review_id("pair1", "carol"), pair_id="pair1", reviewer="carol", winner="skip", shown_order="ab"),
        ])
    return db, judge.judge_id, constitution.content_hash


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_datasets_folder_loads_with_the_jsonl_rows_and_a_card_naming_its_sources(judged_round, tmp_path):
    """The real `rlaif` command: a datasets folder and a JSONL file of the same round, with provenance."""
    db, judge_id, constitution_hash = judged_round
    for out in ("dpo.jsonl", "dpo"):
        done = run_rlaif("export", out, "--provenance", "--db", str(db), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "wrote 4 pairs of round 1" in done.stdout and "1 human-labelled" in done.stdout
    rows = jsonl_rows(tmp_path / "dpo.jsonl")
    assert list(datasets.load_from_disk(str(tmp_path / "dpo"))) == rows
    assert not (tmp_path / "dpo.partial").exists()

    by_pair = {r["pair_id"]: r for r in rows}
    assert set(by_pair) == {"pair0", "pair1", "pair2", "pair3"}  # pair4: a tie in both orders
    human = by_pair["pair0"]  # the judge chose a ("good"); alice's overall label b overrides it
    assert human["source"] == "human" and human["chosen_side"] == "b" and human["confidence"] == 1.0
    assert human["chosen"][0]["content"] == "A poor answer."
    assert human["human_labels"] == [{"reviewer": "alice", "winner": "b", "principle": None}]
    judged = by_pair["pair1"]
    assert judged["source"] == "judge" and judged["chosen_side"] == "b"
    assert judged["human_labels"] == [{"reviewer": "bob", "winner": "b", "principle": "honest"}]  # carol's skip left out
    votes = {v["principle"]: v for v in judged["judge_votes"]}
    assert votes["resolves_request"] == {"principle": "resolves_request", "vote": "b", "counted": True}
    assert votes["honest"] == {"principle": "honest", "vote": "b", "counted": False}  # recorded, not counted
    assert set(votes) >= {"concise", "no_placeholders"}  # the executable checks' votes too

    card = (tmp_path / "dpo" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert {"dpo", "rlaif"} <= set(front["tags"]) and front["size_categories"] == ["n<1K"]
    assert f"| constitution hash | `{constitution_hash}` |" in card and f"| judge | `{judge_id}` |" in card
    assert "larkspur-support (`bundled:support`)" in card
    assert "| honest | no | sensitivity 50% < 70% |" in card
    assert "| protects_customers | no | only 1 held-out violation text" in card
    assert "| resolves_request | yes | qualification: sensitivity 90% (95% CI 80% to 100%)" in card
    assert "| concise | yes | an executable check: always counts |" in card
    assert ("| courteous | yes | agreement with people: kappa 0.40, 95% CI -0.20 to 1.00, on 3 pairs labelled by reviewers; "
            "qualification: sensitivity 80%") in card
    assert "training gate on this agreement: not checked: 1 reviewed pairs (< review.min_reviewed 5)." in card
    assert "| overall | - | 1 |" in card  # the judge against alice's one overall label
    assert "judge.tie_margin 0.02" in card and "confounds balance with length_band 0.4-0.6" in card
    assert "| `judge_votes` |" in card and "| pairs | 4 |" in card and "| labelled by people | 1 " in card


def test_every_format_gives_the_same_rows_with_and_without_provenance(judged_round, tmp_path):
    db, _, _ = judged_round
    runner = CliRunner()
    for flag in ([], ["--provenance"]):
        name = "with" if flag else "without"
        for out in (f"{name}.jsonl", f"{name}.parquet", name):
            done = runner.invoke(app, ["export", str(tmp_path / out), "--db", str(db), *flag])
            assert done.exit_code == 0, done.output
        rows = jsonl_rows(tmp_path / f"{name}.jsonl")
        assert rows == pq.read_table(tmp_path / f"{name}.parquet").to_pylist()
        assert rows == list(datasets.load_from_disk(str(tmp_path / name)))
        provenance = {"chosen_side", "judge_votes", "human_labels"}
        assert all((provenance <= set(row)) == bool(flag) for row in rows) and len(rows) == 4
        assert ("| `judge_votes` |" in (tmp_path / name / "README.md").read_text()) == bool(flag)
    without, with_ = jsonl_rows(tmp_path / "without.jsonl"), jsonl_rows(tmp_path / "with.jsonl")
    assert without == [{k: v for k, v in row.items() if k in without[0]} for row in with_]


def test_an_existing_folder_that_is_not_empty_is_refused_in_one_line_and_left_as_it_was(judged_round, tmp_path):
    db, _, _ = judged_round
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    done = run_rlaif("export", "taken", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 2 and "taken: exists and is not an empty folder" in one_error_line(done)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"] and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "taken.partial").exists()
    runner = CliRunner()
    (tmp_path / "a-file").write_text("x")
    refused = runner.invoke(app, ["export", str(tmp_path / "a-file"), "--db", str(db)])
    assert refused.exit_code == 2 and (tmp_path / "a-file").read_text() == "x"
    csv = runner.invoke(app, ["export", str(tmp_path / "dpo.csv"), "--db", str(db)])
    assert csv.exit_code == 2 and "use a .jsonl or .parquet" in csv.output and not (tmp_path / "dpo.csv").exists()
    (tmp_path / "empty").mkdir()  # an empty folder is filled
    filled = runner.invoke(app, ["export", str(tmp_path / "empty"), "--db", str(db)])
    assert filled.exit_code == 0, filled.output
    assert len(datasets.load_from_disk(str(tmp_path / "empty"))) == 4


def test_a_round_with_no_trustworthy_pair_exports_an_empty_dataset_that_loads(tmp_path):
    card = dataset_card(CardFacts(round_index=2, round_id="round-0002", round_status="running", constitution="c.yaml",
                                  constitution_name=None, constitution_hash="abc", judge_id="j", trust=None,
                                  tie_margin=0.02, data_policy=DataPolicy(), pair_weighting="none", n_pairs=0, n_human=0,
                                  provenance=True))
    assert "its hash is no longer the round's" in card and "recorded no judge gate" in card
    assert "No pair of this round was labelled by people" in card
    write_dataset([], tmp_path / "empty", card, provenance=True)
    loaded = datasets.load_from_disk(str(tmp_path / "empty"))
    assert len(loaded) == 0 and {"judge_votes", "human_labels", "chosen_side"} <= set(loaded.column_names)
    assert (tmp_path / "empty" / "README.md").read_text() == card
