"""Gold sets: pairs people labelled per principle, kept with the project, that measure a judge
against people before any spot-check of a round exists.

A gold set is a labels file in the import format (review/imports.py), every row with its prompt
and both replies, so it stands on its own: `bundled:NAME` is review/gold/NAME.jsonl (how the
bundled one was made: review/gold/README.md), anything else a path. Its pairs are stored once
under the round id `gold:<name>` (purpose "gold"), its labels as reviews of those pairs.

Each pair belongs to one part, fixed by its texts: the teaching part (2 pairs in 5) may become the
judge's worked examples; only the measuring part counts as evidence of the judge's agreement with
people, so a judge is never measured on the pairs it was taught with.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from constitution.loader import Constitution
from prompts.loader import BUNDLED_PREFIX
from review.imports import LabelFileError, labels_to_reviews, read_label_file
from sampling.stage import pair_id
from store.db import Store
from store.ids import stable_id, stable_int
from store.rows import CompletionRow, PairRow, PromptRow

Part = Literal["teach", "measure"]
GOLD_PREFIX = "gold:"
GOLD_MODEL = "gold"  # the model id of a gold set's replies (which policy sampled them is in its README)


class GoldPair(BaseModel):
    pair: PairRow
    part: Part


def gold_path(source: str) -> Path:
    if source.startswith(BUNDLED_PREFIX):
        return Path(str(resources.files("review") / "gold" / f"{source[len(BUNDLED_PREFIX):]}.jsonl"))
    return Path(source)


def gold_round(source: str) -> str:
    return GOLD_PREFIX + (source[len(BUNDLED_PREFIX):] if source.startswith(BUNDLED_PREFIX) else Path(source).stem)


def part_of(prompt: str, text_a: str, text_b: str) -> Part:
    """The pair's part, decided once by its texts: 2 pairs in 5 teach, the rest measure."""
    return "teach" if stable_int("gold-part", prompt, text_a, text_b) % 5 < 2 else "measure"


def usable(source: str, constitution: Constitution) -> str | None:
    """None if the gold set can measure a judge of this constitution, else why not (a principle it
    labels is not in the constitution: it was labelled for another one)."""
    rows = read_label_file(gold_path(source))
    named = {row.principle for _, row in rows if row.principle is not None}
    missing = named - {p.id for p in constitution.principles}
    if missing:
        return f"gold set {source} labels principles this constitution lacks ({', '.join(sorted(missing))})"
    return None


def store_gold(store: Store, source: str, constitution: Constitution) -> list[GoldPair]:
    """Store the gold set's prompts, replies, pairs and labels (idempotent); returns its pairs with their parts."""
    path = gold_path(source)
    rows = read_label_file(path)
    round_id = gold_round(source)
    prompts: dict[str, PromptRow] = {}
    completions: dict[str, CompletionRow] = {}
    pairs: dict[tuple[str, str, str], GoldPair] = {}
    for number, row in rows:
        if row.prompt is None or row.text_a is None or row.text_b is None:
            raise LabelFileError(f"{path}: line {number}: a gold set names each pair by prompt, text_a and text_b")
        key = (row.prompt, row.text_a, row.text_b)
        if key in pairs:
            continue
        prompt = PromptRow(prompt_id=stable_id("prompt", row.prompt, round_id), text=row.prompt, source=round_id,
                           tags=[], split="heldout")
        prompts[prompt.prompt_id] = prompt
        sides = [_reply(round_id, prompt.prompt_id, text) for text in (row.text_a, row.text_b)]
        completions.update({c.completion_id: c for c in sides})
        pair = PairRow(pair_id=pair_id(round_id, sides[0].completion_id, sides[1].completion_id), round_id=round_id,
                       prompt_id=prompt.prompt_id, purpose="gold", completion_a=sides[0].completion_id,
                       completion_b=sides[1].completion_id)
        pairs[key] = GoldPair(pair=pair, part=part_of(*key))
    store.append(list(prompts.values()))
    store.append(list(completions.values()))
    store.append([g.pair for g in pairs.values()])
    store.append(labels_to_reviews(store, path, rows, constitution, default_reviewer=None))
    return list(pairs.values())


def teaching_pairs(store: Store) -> frozenset[str]:
    """The stored gold pairs of every gold set's teaching part (never evidence of agreement)."""
    return frozenset(pair_id for pair_id, texts in store.pair_texts("gold").items() if part_of(*texts) == "teach")


def _reply(round_id: str, prompt_id: str, text: str) -> CompletionRow:
    """A gold reply as a completion row: its text is what counts (no token ids or log-probs are known)."""
    return CompletionRow(completion_id=stable_id("gold-reply", round_id, prompt_id, text), round_id=round_id,
                         prompt_id=prompt_id, model_id=GOLD_MODEL, purpose="gold", sample_index=0,
                         seed=0, text=text, token_ids=[], prompt_tokens=0, completion_tokens=len(text.split()),
                         finish_reason="stop", sum_logprob=0.0, sampling_json={})
