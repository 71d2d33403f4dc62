"""Export a round's DPO dataset in the TRL / Hugging Face preference format.

One row per trustworthy pair, conversational: `prompt` is the chat (system + user), `chosen` and
`rejected` are one assistant message each, as `trl.DPOTrainer` reads them. Provenance columns say
where the preference came from (judge or human) and why; `provenance` adds, per pair, the judge's
vote on every principle and every label people gave it.

Three formats, one schema (so the rows are equal whichever is read): JSONL, Parquet, and a Hugging
Face `datasets` folder (`Dataset.save_to_disk`) with a dataset card (README.md) that says where the
data came from: the constitution, the judge and how far it was trusted, and the filters applied.
The card is built from typed facts (`CardFacts`) gathered by the caller; nothing here reads the store.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from store.rows import AgreementRow, PreferenceRecord
from training.data import DataPolicy

FILE_SUFFIXES = (".jsonl", ".parquet")

_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("prompt", _MESSAGES), ("chosen", _MESSAGES), ("rejected", _MESSAGES),
    ("pair_id", pa.string()), ("round", pa.int64()), ("source", pa.string()), ("confidence", pa.float64()),
    ("rationale", pa.string()),
]
PROVENANCE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("chosen_side", pa.string()),
    ("judge_votes", pa.list_(pa.struct([("principle", pa.string()), ("vote", pa.string()), ("counted", pa.bool_())]))),
    ("human_labels", pa.list_(pa.struct([("reviewer", pa.string()), ("winner", pa.string()), ("principle", pa.string())]))),
]


def export_schema(provenance: bool = False) -> pa.Schema:
    """The one schema of every format (lists of structs, never maps: JSONL, Parquet and `datasets`
    give back the same rows)."""
    return pa.schema(BASE_COLUMNS + (PROVENANCE_COLUMNS if provenance else []))


class JudgeVote(BaseModel):
    principle: str
    vote: Literal["a", "b", "tie", "n/a"]  # the combined verdict's vote, in the pair's a/b terms
    counted: bool                          # False: the judge was not trusted on it; left out of its score


class HumanLabel(BaseModel):
    reviewer: str
    winner: Literal["a", "b", "tie"]  # in the pair's a/b terms
    principle: str | None             # None: the overall preference (the one that overrides the judge)


class PairProvenance(BaseModel):
    """One pair's evidence: its judge votes per principle and people's labels, in the pair's a/b
    terms; `chosen_side` says which of a and b is the row's `chosen`."""

    judge_votes: list[JudgeVote]
    human_labels: list[HumanLabel]


def trl_rows(records: Sequence[PreferenceRecord], system_prompt: str, round_index: int,
             provenance: Mapping[str, PairProvenance] | None = None) -> list[dict]:
    """The export's rows; with `provenance` (pair id -> its evidence), its columns too (empty lists
    for a pair with none)."""
    rows = []
    for r in records:
        row = {
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r.prompt}],
            "chosen": [{"role": "assistant", "content": r.chosen_text}],
            "rejected": [{"role": "assistant", "content": r.rejected_text}],
            "pair_id": r.pair_id, "round": round_index, "source": r.source, "confidence": r.confidence,
            "rationale": r.rationale,
        }
        if provenance is not None:
            found = provenance.get(r.pair_id, PairProvenance(judge_votes=[], human_labels=[]))
            row |= {"chosen_side": r.chosen_side, "judge_votes": [v.model_dump() for v in found.judge_votes],
                    "human_labels": [h.model_dump() for h in found.human_labels]}
        rows.append(row)
    return rows


def _table(rows: list[dict], provenance: bool) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=export_schema(provenance))


def write_rows(rows: list[dict], path: Path, provenance: bool = False) -> None:
    """JSONL or Parquet by the file's suffix, written aside and renamed (never half a file)."""
    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".jsonl":
        partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(_table(rows, provenance), partial)
    else:
        raise ValueError(f"{path}: use a .jsonl or .parquet file name")
    partial.rename(path)


def write_dataset(rows: list[dict], folder: Path, card: str, provenance: bool = False) -> None:
    """A Hugging Face `datasets` folder (`save_to_disk`) with `card` as its README.md, written into a
    sibling folder and renamed into place (never half a folder). `folder` must not exist or be empty."""
    import datasets  # heavy: only for this format
    from datasets.table import InMemoryTable

    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():  # a crashed export's leftovers (the name is this function's own)
        shutil.rmtree(partial)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.Dataset(InMemoryTable(_table(rows, provenance)))
        dataset.save_to_disk(str(partial), num_shards=None if rows else 1)  # no rows: still one (empty) shard to load
        (partial / "README.md").write_text(card)
        partial.rename(folder)  # onto an empty folder too; a non-empty one refuses (OSError)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets.enable_progress_bars()


class PrincipleTrust(BaseModel):
    """Whether the judge's votes on one principle counted in its verdicts, and the evidence."""

    principle: str
    counted: bool
    why: str


class CardFacts(BaseModel):
    """What a dataset card says about where the rows came from (gathered from the store by the caller)."""

    round_index: int
    round_id: str
    round_status: str
    constitution: str                # where the round's config found it (bundled:NAME or a path)
    constitution_name: str | None    # None: it no longer has the round's content hash
    constitution_hash: str
    judge_id: str
    trust: list[PrincipleTrust] | None  # None: the round recorded no judge gate
    taught: list[str] = []           # the worked examples from people the judge was given: "principle (pair id)"
    agreement: list[AgreementRow] = []  # the judge against people's labels on this round's pairs
    training_gate: str | None = None    # the round's judge-human agreement check as it recorded it
    tie_margin: float
    data_policy: DataPolicy
    pair_weighting: str
    n_pairs: int
    n_human: int
    provenance: bool


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _size_category(n: int) -> str:
    """The Hub's `size_categories` value for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return name
    return "100M<n<1B"


def dataset_card(facts: CardFacts) -> str:
    """The folder's README.md: a Hugging Face dataset card (YAML front matter, then Markdown)."""
    f = facts
    constitution = (f"{f.constitution_name} (`{f.constitution}`)" if f.constitution_name
                    else f"`{f.constitution}` (the file has changed since the round: its hash is no longer the round's)")
    lines = [
        "---",
        f"pretty_name: {json.dumps(f'rlaif round {f.round_index} preference pairs')}",
        "tags:", "- dpo", "- rlaif", "- preference", "- trl",
        "task_categories:", "- text-generation",
        "size_categories:", f"- {_size_category(f.n_pairs)}",
        "---",
        "",
        f"# rlaif round {f.round_index}: DPO preference pairs",
        "",
        f"The trustworthy pairs of round {f.round_index} of an rlaif run, in TRL's conversational preference format "
        "(`prompt`, `chosen`, `rejected`), exported by `rlaif export`. Load them with "
        "`datasets.load_from_disk(<this folder>)`.",
        "",
        "## Where the pairs came from",
        "",
        "| | |",
        "|---|---|",
        f"| round | {f.round_index} (`{_cell(f.round_id)}`), {_cell(f.round_status)} |",
        f"| constitution | {_cell(constitution)} |",
        f"| constitution hash | `{f.constitution_hash}` |",
        f"| judge | `{_cell(f.judge_id)}` |",
        f"| pairs | {f.n_pairs} |",
        f"| labelled by people | {f.n_human} (their label overrides the judge; `source` is `human`) |",
        "",
        "## Which principles the judge was trusted on",
        "",
    ]
    if f.trust is None:
        lines.append("The round recorded no judge gate: which principles counted is not known.")
    elif not f.trust:
        lines.append("The constitution has no principles the gate recorded.")
    else:
        lines += ["A principle the judge was not trusted on still has its vote recorded, but it was left out of the "
                  "verdict's score.", "", "| principle | counted | why |", "|---|---|---|"]
        lines += [f"| {_cell(t.principle)} | {'yes' if t.counted else 'no'} | {_cell(t.why)} |" for t in f.trust]
    if f.taught:
        lines += ["", f"The judge was taught with {len(f.taught)} worked example(s) from people: "
                  + ", ".join(_cell(t) for t in f.taught) + "; those pairs are not evidence of its agreement."]
    lines += ["", "## The judge against people", ""]
    overall = next((a for a in f.agreement if a.scope == "overall"), None)
    if overall is None or (overall.n == 0 and len(f.agreement) == 1):
        lines.append("No pair of this round was labelled by people: the judge's agreement with them on it is unknown.")
    else:
        lines += ["On this round's pairs labelled by people, overall, per principle they labelled and per prompt tag "
                  "(measured when exported):", "",
                  "| scope | subject | pairs | accuracy | kappa (95% CI) | true positive rate | false positive rate |",
                  "|---|---|---|---|---|---|---|"]
        for a in f.agreement:
            kappa = f"{_num(a.kappa)} ({_num(a.kappa_low)} to {_num(a.kappa_high)})"
            lines.append(f"| {a.scope} | {_cell(a.subject) or '-'} | {a.n} | {_num(a.accuracy)} | {kappa} | "
                         f"{_num(a.true_positive_rate)} | {_num(a.false_positive_rate)} |")
    if f.training_gate:
        lines += ["", f"The round's training gate on this agreement: {_cell(f.training_gate)}."]
    p = f.data_policy
    low, high = p.length_band
    lines += [
        "", "## Filters applied", "",
        "- the round's training pairs only (with more than two samples per prompt: each prompt's best vs worst sample)",
        "- the judge's verdict is valid in both presentation orders and names the same winner in both; a tie in either "
        f"order (weighted score within judge.tie_margin {f.tie_margin:g} of 0) drops the pair",
        "- the votes of principles the judge was not trusted on (above) are left out of each order's score",
        "- a label from people overrides the judge (the majority of their overall labels, skips left out); a tie among "
        "people drops the pair",
        "- the same (prompt, chosen, rejected) is kept once",
        "- no confidence threshold beyond the tie margin: `confidence` is the smaller |weighted score| of the two "
        "orders (1.0 for a label from people)",
        "", "Not applied here (the round's training data policy, applied when it trains):", "",
        f"- min_pairs {p.min_pairs}; confounds {p.confounds} with length_band {low:g}-{high:g} (the share of pairs "
        "whose chosen reply is longer); so this export may be length-confounded: check it",
        f"- mix_rounds {p.mix_rounds}: only this round's pairs are here; the trainer's pair_weighting {f.pair_weighting}",
        "", "## Columns", "",
        "| column | |", "|---|---|",
        "| `prompt` | the chat: the system message and the user's message |",
        "| `chosen`, `rejected` | one assistant message each |",
        "| `pair_id` | the pair's id in the rlaif store |",
        "| `round` | the round's index |",
        "| `source` | `judge` or `human` (who decided the preference) |",
        "| `confidence` | see above |",
        "| `rationale` | the judge's reasons in both orders, or `human review` |",
    ]
    if f.provenance:
        lines += [
            "| `chosen_side` | which of the pair's replies is `chosen`: `a` or `b` (the votes and labels below are in a/b terms) |",
            "| `judge_votes` | per principle: the judge's vote (`a`, `b`, `tie` when the orders disagree, `n/a`) and "
            "whether it counted |",
            "| `human_labels` | every label people gave the pair: reviewer, winner (`a`, `b`, `tie`), principle (empty: "
            "the overall preference) |",
        ]
    return "\n".join(lines) + "\n"
