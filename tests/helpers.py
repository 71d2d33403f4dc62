"""Test data helpers (importable from tests: pytest puts this folder on sys.path)."""

from __future__ import annotations

from store.db import Store
from store.rows import CompletionRow, PairRow, PromptRow


def seed_pairs(store: Store, texts: list[tuple[str, str, str]], round_id: str = "r") -> list[PairRow]:
    """Store one prompt and one pair per (prompt, text a, text b); returns the pairs."""
    prompts, completions, pairs = [], [], []
    for i, (prompt, text_a, text_b) in enumerate(texts):
        prompts.append(PromptRow(prompt_id=f"p{i}", text=prompt, source="t", tags=[], split="train"))
        for s, text in enumerate([text_a, text_b]):
            completions.append(CompletionRow(
                completion_id=f"c{i}-{s}", round_id=round_id, prompt_id=f"p{i}", model_id="m", purpose="train",
                sample_index=s, seed=0, text=text, token_ids=[1, 2], prompt_tokens=3, completion_tokens=2,
                finish_reason="stop", sum_logprob=-1.0, sampling_json={}))
        pairs.append(PairRow(pair_id=f"pair{i}", round_id=round_id, prompt_id=f"p{i}", purpose="train",
                             completion_a=f"c{i}-0", completion_b=f"c{i}-1"))
    store.append(prompts)
    store.append(completions)
    store.append(pairs)
    return pairs
