"""`rlaif status`, `judge-stats`, `export`, `report`, `track`: read the store, change nothing.

With a ducklake store they work while a round writes; a DuckDB file is locked by a running round.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from flows.cli_common import CONFIG_OPTION, DB_OPTION, SET_OPTION, console, existing_store, fail, guard, round_or_latest, store_location
from flows.config import ConfigError
from flows.tables import (
    StatusLine,
    agreement_table,
    co_decision_table,
    counts_table,
    evaluations_table,
    judge_stats_tables,
    judges_agreement_line,
    people_table,
    qualification_table,
    status_table,
)
from judges.qualification import QualificationGate, QualificationResult
from store.db import Store, StoreError
from store.rows import JudgeQualificationRow, RoundRow


def print_qualifications(rows: list[JudgeQualificationRow], gates: dict[str, QualificationGate] | None = None) -> None:
    """Every given judge qualification: per principle, the share of known-answer pairs it got right,
    and (`gates`, by judge id: the latest round of that judge) whether the principle counted."""
    for row in rows:
        console.print(qualification_table(QualificationResult.model_validate(row.result_json), (gates or {}).get(row.judge_id)))


def round_gates(store: Store, rounds: list[RoundRow]) -> dict[str, QualificationGate]:
    """judge id -> the gate of the latest round judged by it (what `counts?` means in its tables)."""
    from evals.report_data import stage_outcome

    gates = {}
    for rnd in rounds:
        gate = stage_outcome(store, rnd, "qualify", QualificationGate) if rnd.judge_id else None
        if gate is not None and rnd.judge_id is not None:
            gates[rnd.judge_id] = gate
    return gates


def print_judge_stats(store: Store, rnd: RoundRow) -> None:
    from evals.report_data import stage_outcome
    from judges.qualification import QualificationGate
    from judges.stats import agreement, judge_stats

    grouped = store.verdicts_of_round(rnd.round_id)
    if not grouped:
        console.print(f"round {rnd.round_index} has no judged pairs")
        return
    judges = {judge_id for judge_id, _ in grouped}
    print_qualifications([q for q in store.qualifications() if q.judge_id in judges])
    gate = stage_outcome(store, rnd, "qualify", QualificationGate)
    for judge_id, constitution_hash in grouped:
        print_people_agreement(store, judge_id, constitution_hash, gate if judge_id == rnd.judge_id else None)
    for table in judge_stats_tables(rnd.round_index, {key: judge_stats(rows) for key, rows in grouped.items()}):
        console.print(table)
    keys = list(grouped)
    for i, left in enumerate(keys):
        for right in keys[i + 1:]:
            console.print(judges_agreement_line(left[0], right[0], agreement(grouped[left], grouped[right])))


def print_people_agreement(store: Store, judge_id: str, constitution_hash: str, trusted=None) -> None:
    """The judge against people on every labelled pair it judged (the pairs it was taught with left out:
    gold sets' teaching parts, and the spot-checks `trusted.taught` names)."""
    from judges.stats import co_decisions
    from review.agreement import agreement_with_people, labels_side_by_side
    from review.gold import teaching_pairs

    teaching = teaching_pairs(store) | {t.pair_id for t in (trusted.taught if trusted else [])}
    people = agreement_with_people(store, judge_id, constitution_hash, exclude=teaching)
    if not people:
        console.print(f"{judge_id}: no pair labelled per principle by people has been judged by it: its agreement with "
                      "people is unknown (see `rlaif review import` and review.gold)", highlight=False, soft_wrap=True)
        return
    console.print(people_table(judge_id, people, trusted))
    judge_votes, people_labels = labels_side_by_side(store, judge_id, constitution_hash, exclude=teaching)
    principles = sorted(people)
    console.print(co_decision_table(co_decisions(judge_votes, principles), co_decisions(people_labels, principles)))


@guard
def status(db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Rounds, counts and the last metrics from the store."""
    from evals.report_data import round_point

    with existing_store(store_location(db, config), read_only=True) as store:
        rounds, lines = store.rounds(), []
        for r in rounds:
            verdicts = store.verdicts_of_round(r.round_id).get((r.judge_id, r.constitution_hash), []) if r.judge_id else []
            steps = store.train_metrics(r.train_run_id) if r.train_run_id else []
            reviewed = {v.pair_id for v in store.reviews_of_round(r.round_id) if v.winner != "skip"}
            lines.append(StatusLine(point=round_point(store, r), pairs=len(verdicts), queued=len(store.review_queue(r.round_id)),
                                    reviewed=len(reviewed), first_loss=steps[0].loss if steps else None,
                                    last_loss=steps[-1].loss if steps else None))
        console.print(status_table(store.name, lines))
        if any(line.point.lc_win_rate is not None for line in lines):
            console.print(evaluations_table([line.point for line in lines]))
        for r in rounds:  # the reasons are sentences: printed in full, wrapped at the terminal's width
            console.print(f"{'round' if r.kind == 'round' else 'collection'} {r.round_index} (policy {r.policy_id}): "
                          f"{escape(r.status_reason or r.status)}",
                          highlight=False)
        print_qualifications(store.qualifications(), round_gates(store, rounds))
        latest = store.agreement(rounds[-1].round_id) if rounds else []
        if latest:
            console.print(agreement_table(rounds[-1].round_index, latest))
        console.print(counts_table(store.count_rows()))
        policy = store.current_policy()
        console.print(f"current policy: {policy.model_id if policy else '-'} ({policy.kind if policy else ''})")


@guard
def judge_stats(round_index: Optional[int] = typer.Option(None, "--round", help="round (default: the latest)"),
                db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Position consistency, tie and invalid rates, per-principle votes, and agreement between judges."""
    with existing_store(store_location(db, config), read_only=True) as store:
        print_judge_stats(store, round_or_latest(store, round_index))


@guard
def export(out: Path = typer.Argument(..., help="a .jsonl or .parquet file, or a folder (no suffix): a Hugging Face "
                                                "datasets folder with a dataset card"),
           round_index: Optional[int] = typer.Option(None, "--round", help="round (default: the latest)"),
           provenance: bool = typer.Option(False, "--provenance", help="add per-pair columns: chosen_side, judge_votes "
                                           "(per principle), human_labels"),
           db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Write a round's DPO dataset (trustworthy pairs, human labels applied) in TRL's prompt/chosen/rejected format."""
    from flows.export import round_dataset
    from training.export import FILE_SUFFIXES, dataset_card, write_dataset, write_rows

    folder = out.suffix not in FILE_SUFFIXES
    if folder and out.suffix and not out.is_dir():
        raise ConfigError(f"{out}: use a .jsonl or .parquet file name, or a folder name without a suffix "
                          "(a Hugging Face datasets folder)")
    if folder and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty folder: export a datasets folder into a new or empty one")
    with existing_store(store_location(db, config), read_only=True) as store:
        rnd = round_or_latest(store, round_index)
        if rnd.judge_id is None:
            raise StoreError(f"round {rnd.round_index} has no finished judging to export (status {rnd.status})")
        exported = round_dataset(store, rnd, rnd.judge_id, provenance)
    if folder:
        write_dataset(exported.rows, out, dataset_card(exported.card), provenance)
    else:
        write_rows(exported.rows, out, provenance)
    what = "a datasets folder with its card, README.md" if folder else "TRL rows"
    console.print(f"wrote {exported.n_pairs} pairs of round {rnd.round_index} to {escape(str(out))} "
                  f"({exported.n_human} human-labelled; {what}{', with provenance' if provenance else ''})",
                  highlight=False, soft_wrap=True)


@guard
def report(round_index: int = typer.Argument(..., metavar="ROUND"),
           fmt: str = typer.Option("html", "--format", help="html (a self-contained page with plots) or md (Markdown)"),
           out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: rlaif-round-N.html; md prints)"),
           db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """A round's report: win rates, principles, lengths, training curves, judge trust, example pairs."""
    from evals.report import render_html, render_markdown
    from evals.report_data import build_report

    if fmt not in ("html", "md"):
        fail(f"--format {fmt}: use html or md", 2)
    with existing_store(store_location(db, config), read_only=True) as store:
        data = build_report(store, round_index)
    if fmt == "md" and out is None:
        sys.stdout.write(render_markdown(data))
        return
    target = out or Path(f"rlaif-round-{round_index}.html")
    text = render_markdown(data) if fmt == "md" else render_html(data)
    partial = target.with_name(target.name + ".partial")  # never a half-written report
    partial.write_text(text)
    partial.rename(target)
    console.print(f"wrote {target}", highlight=False, soft_wrap=True)


@guard
def track(round_index: Optional[int] = typer.Argument(None, metavar="ROUND", help="default: the latest round"),
          config: Path = typer.Option(..., "--config", "-c", help="round config YAML: its `tracking` section says where"),
          db: Optional[str] = DB_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """Log a finished round's metrics to TensorBoard / MLflow again (config `tracking`; a round that has
    a run already gets a new one in its place). A finished round is logged by itself."""
    from flows.config import load_config
    from flows.tracking import TrackingError, require_packages, track_round

    settings = load_config(config, overrides).tracking
    if not settings.enabled:
        fail(f"{config}: the tracking section sets neither tensorboard nor mlflow", 2)
    try:
        require_packages(settings)
        with existing_store(store_location(db, config, overrides), read_only=True) as store:
            rnd = round_or_latest(store, round_index)
            track_round(store, settings, rnd.round_id)
    except TrackingError as exc:
        fail(str(exc), 2)
    where = ", ".join(f"{name} {dest}" for name, dest in (("MLflow", settings.mlflow), ("TensorBoard", settings.tensorboard)) if dest)
    console.print(f"round {rnd.round_index} logged to {escape(where)}", highlight=False, soft_wrap=True)
