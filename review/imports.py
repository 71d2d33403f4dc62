"""Labels made elsewhere (an annotation tool's export, a spreadsheet, a gold set) brought in as reviews.

A labels file is JSONL (one object per line) or CSV (a header row), one label per row:

    pair_id                 a stored pair's id, or else all three of:
    prompt, text_a, text_b  the message and the two replies, matched to a stored pair with the same
                            texts (in either order: the label is flipped to the pair's own a/b)
    winner                  a | b | tie, in the row's a/b terms
    principle               optional: the principle the label is about (empty: the overall preference)
    reviewer                who labelled it (or --reviewer for every row)
    rationale               optional: why

Every row is read, checked and matched before anything is stored, and a file with a bad row stores
nothing: the error names the file, the line and the field. Importing the same file twice stores
nothing new (a label is keyed by pair, reviewer and principle).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from constitution.loader import Constitution
from inputs.files import read_jsonl, validated_records
from review.labels import review_id
from store.db import Store
from store.rows import PairRow, ReviewRow


class LabelFileError(ValueError):
    """A labels file is missing, malformed or names pairs the store does not have; the message says where."""


class LabelRow(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    pair_id: str | None = None
    prompt: str | None = None
    text_a: str | None = None
    text_b: str | None = None
    winner: Literal["a", "b", "tie"]
    principle: str | None = None
    reviewer: str | None = None
    rationale: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_cells_are_missing(cls, data):
        return {k: (None if v == "" else v) for k, v in data.items()} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _names_a_pair(self) -> LabelRow:
        if self.pair_id is None and None in (self.prompt, self.text_a, self.text_b):
            raise ValueError("give pair_id, or prompt, text_a and text_b")
        return self


class ImportedLabels(BaseModel):
    rows: int
    stored: int      # new reviews (a label already stored is not stored again)
    pairs: int       # distinct pairs labelled
    principles: list[str]


def read_label_file(path: Path) -> list[tuple[int, LabelRow]]:
    """(line number, row) for every label in a JSONL or CSV file."""
    if not path.is_file():
        raise LabelFileError(f"{path}: labels file not found")
    records: list[tuple[int, object]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            for cells in reader:
                if None in cells:  # more cells than the header has columns
                    raise LabelFileError(f"{path}: line {reader.line_num}: more cells than the header names")
                records.append((reader.line_num, cells))
    else:
        records = read_jsonl(path, LabelFileError)
    rows = validated_records(path, records, LabelRow, LabelFileError, "line", "winner and the pair")
    if not rows:
        raise LabelFileError(f"{path}: no labels")
    return rows


def labels_to_reviews(store: Store, path: Path, rows: Sequence[tuple[int, LabelRow]], constitution: Constitution,
                      default_reviewer: str | None) -> list[ReviewRow]:
    """The rows as reviews of stored pairs, in each pair's own a/b terms; every problem names its line."""
    principles = {p.id for p in constitution.principles}
    by_id = store.by_ids(PairRow, [r.pair_id for _, r in rows if r.pair_id is not None])
    by_text = store.pairs_by_texts([(r.prompt, r.text_a, r.text_b) for _, r in rows if r.pair_id is None])  # type: ignore[misc]
    reviews: dict[str, tuple[int, ReviewRow]] = {}
    for number, row in rows:
        where = f"{path}: line {number}"
        reviewer = row.reviewer or default_reviewer
        if not reviewer:
            raise LabelFileError(f"{where}: reviewer: missing (or pass --reviewer)")
        if row.principle is not None and row.principle not in principles:
            raise LabelFileError(f"{where}: principle: {row.principle!r} is not a principle of constitution "
                                 f"{constitution.content_hash} ({', '.join(sorted(principles))})")
        if row.pair_id is not None:
            if row.pair_id not in by_id:
                raise LabelFileError(f"{where}: pair_id: no pair {row.pair_id!r} in {store.name}")
            matches = [(row.pair_id, False)]
        else:
            matches = by_text.get((row.prompt, row.text_a, row.text_b), [])  # type: ignore[arg-type]
            if not matches:
                raise LabelFileError(f"{where}: no stored pair has this prompt and these two replies")
        for pair_id, swapped in matches:  # the same texts in several pairs: the label holds for each
            winner = {"a": "b", "b": "a"}.get(row.winner, row.winner) if swapped else row.winner
            review = ReviewRow(review_id=review_id(pair_id, reviewer, row.principle), pair_id=pair_id, reviewer=reviewer,
                               winner=winner, rationale=row.rationale, shown_order="ab", principle=row.principle)
            earlier = reviews.get(review.review_id)
            if earlier is not None and earlier[1].winner != winner:
                raise LabelFileError(f"{where}: {reviewer} labelled this pair{'' if row.principle is None else ' on ' + row.principle}"
                                     f" differently on line {earlier[0]}")
            reviews.setdefault(review.review_id, (number, review))
    return [review for _, review in reviews.values()]


def import_labels(store: Store, path: Path, constitution: Constitution, default_reviewer: str | None = None) -> ImportedLabels:
    """Read, check and match every row, then store them all in one write."""
    rows = read_label_file(path)
    reviews = labels_to_reviews(store, path, rows, constitution, default_reviewer)
    stored = store.append(reviews)
    return ImportedLabels(rows=len(rows), stored=stored, pairs=len({r.pair_id for r in reviews}),
                          principles=sorted({r.principle for r in reviews if r.principle}))
