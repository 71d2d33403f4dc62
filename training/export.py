"""Export a round's DPO dataset in the TRL / Hugging Face preference format.

One row per trustworthy pair, conversational: `prompt` is the chat (system + user), `chosen` and
`rejected` are one assistant message each, as `trl.DPOTrainer` reads them. Provenance columns say
where the preference came from (judge or human) and why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store.rows import PreferenceRecord


def trl_rows(records: Sequence[PreferenceRecord], system_prompt: str, round_index: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": r.prompt}],
            "chosen": [{"role": "assistant", "content": r.chosen_text}],
            "rejected": [{"role": "assistant", "content": r.rejected_text}],
            "pair_id": r.pair_id, "round": round_index, "source": r.source, "confidence": r.confidence,
            "rationale": r.rationale,
        }
        for r in records
    ]


def write_rows(rows: list[dict], path: Path) -> None:
    """JSONL or Parquet by the file's suffix, written aside and renamed (never half a file)."""
    partial = path.with_name(path.name + ".partial")
    if path.suffix == ".jsonl":
        partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), partial)
    else:
        raise ValueError(f"{path}: use a .jsonl or .parquet file name")
    partial.rename(path)
