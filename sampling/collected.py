"""Completions that came from somewhere else (a production model's logs, an A/B test, another team's
model), read from a file so a collection can judge them: JSONL or Parquet, one prompt per row.

    {"prompt": "...", "responses": ["...", "..."], "tags": ["billing"], "id": "ticket-17",
     "metadata": {"model": "prod-v3"}}

`responses` holds two or more replies (a pair is a group of two; replies to the same prompt text in
several rows are one group); a reply is a string or an object `{"text": ..., "id": ..., "model": ...}`.
`tags`, `id` and `metadata` are optional; they are kept with the replies (tags also route
spot-checks, as a prompt's tags do). Every problem names its row; a file with one bad row is
refused whole.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inputs.files import read_jsonl, validated_records
from prompts.loader import Prompt
from sampling.sampler import SampledCompletion


class CollectedFileError(ValueError):
    """The file is missing or a row is invalid; the message names the file and the row."""


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    id: str | None = None
    model: str | None = None


class CollectedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    responses: list[Response] = Field(min_length=2)
    tags: list[str] = Field(default_factory=list)
    id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("responses", mode="before")
    @classmethod
    def _texts_are_responses(cls, value: Any) -> Any:
        return [{"text": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


def read_collected_file(path: Path) -> list[tuple[int, CollectedRow]]:
    """(row number, row) for every row of a JSONL or Parquet file (rows counted from 1)."""
    if not path.is_file():
        raise CollectedFileError(f"{path}: file of completions not found")
    records: list[tuple[int, object]] = []
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow says why in its own terms
            raise CollectedFileError(f"{path}: not a readable Parquet file ({exc})") from None
        records = list(enumerate(table.to_pylist(), start=1))
    elif path.suffix == ".jsonl":
        records = read_jsonl(path, CollectedFileError, unit="row")
    else:
        raise CollectedFileError(f"{path}: use a .jsonl or .parquet file")
    # Parquet fills absent optional columns with null: absent they are
    records = [(n, {k: v for k, v in r.items() if v is not None} if isinstance(r, dict) else r) for n, r in records]
    rows = validated_records(path, records, CollectedRow, CollectedFileError, "row", "prompt and responses")
    if not rows:
        raise CollectedFileError(f"{path}: no rows")
    return rows


def file_prompts(rows: list[tuple[int, CollectedRow]], source: str) -> list[Prompt]:
    """The file's prompts (train split), one per distinct prompt text, tags merged."""
    tags: dict[str, list[str]] = {}
    for _, row in rows:
        tags.setdefault(row.prompt, [])
        tags[row.prompt] += [t for t in row.tags if t not in tags[row.prompt]]
    return [Prompt(text=text, tags=found, source=source) for text, found in tags.items()]


def file_completions(rows: list[tuple[int, CollectedRow]], source: str, tokenizer: Any) -> list[tuple[SampledCompletion, dict]]:
    """Every reply as a completion of its prompt (sample index = its place among the prompt's replies,
    over all rows), with what the file said about it (row, ids, model, metadata). Token ids are the
    policy tokenizer's encoding of the text; the log-prob is unknown (0.0)."""
    prompts = {p.text: p.prompt_id for p in file_prompts(rows, source)}
    seen: dict[str, int] = {}
    out = []
    for number, row in rows:
        for response in row.responses:
            index = seen.get(row.prompt, 0)
            seen[row.prompt] = index + 1
            completion = SampledCompletion(key=prompts[row.prompt], sample_index=index, seed=0, text=response.text,
                                           token_ids=tokenizer(response.text, add_special_tokens=False)["input_ids"],
                                           prompt_tokens=0, finish_reason="stop", sum_logprob=0.0)
            about = {"row": number, "row_id": row.id, "response_id": response.id, "model": response.model,
                     "metadata": row.metadata}
            out.append((completion, {k: v for k, v in about.items() if v not in (None, {})}))
    return out


def file_key(path: Path) -> str:
    """The file's identity: its bytes (the same file collected twice is one collection)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
