"""Sampling as a round stage: plan, skip what the store already has, sample the rest, store it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prompts.loader import Prompt
from sampling.sampler import SampleBatch, SampledCompletion, SampleRequest, SamplingParams, plan_batches, sample
from store.db import Store
from store.ids import stable_id
from store.rows import CompletionRow, PairRow

Progress = Callable[[int, int], None]


def completion_id(round_id: str, prompt_id: str, model_id: str, sample_index: int, seed: int, purpose: str) -> str:
    return stable_id("completion", round_id, prompt_id, model_id, sample_index, seed, purpose)


def sample_for_round(
    store: Store,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_id: str,
    round_id: str,
    prompts: Sequence[Prompt],
    system_prompt: str,
    params: SamplingParams,
    seed: int,
    purpose: str,
    progress: Progress = lambda done, total: None,
) -> list[CompletionRow]:
    """Completions for every prompt (params.n each); batches already stored are not resampled."""
    requests = [SampleRequest(key=p.prompt_id, system=system_prompt, user=p.text) for p in prompts]
    plan = plan_batches(len(requests), params, seed)

    def ids_of(batch: SampleBatch) -> list[str]:
        return [completion_id(round_id, requests[r].key, model_id, s, batch.seed, purpose) for r, s in batch.rows]

    all_ids = [cid for batch in plan for cid in ids_of(batch)]
    stored = set(store.by_ids(CompletionRow, all_ids))
    total = len(all_ids)
    done = [len(stored)]
    progress(done[0], total)

    def store_batch(completions: list[SampledCompletion]) -> None:
        rows = [_to_row(c, round_id, model_id, purpose, params) for c in completions]
        store.append(rows)
        done[0] += len(rows)
        progress(done[0], total)

    sample(model, tokenizer, requests, params, seed,
           skip_batch=lambda batch: all(cid in stored for cid in ids_of(batch)), on_batch=store_batch)
    by_id = store.by_ids(CompletionRow, all_ids)
    return [by_id[cid] for cid in all_ids]


def _to_row(c: SampledCompletion, round_id: str, model_id: str, purpose: str, params: SamplingParams) -> CompletionRow:
    return CompletionRow(
        completion_id=completion_id(round_id, c.key, model_id, c.sample_index, c.seed, purpose),
        round_id=round_id, prompt_id=c.key, model_id=model_id, purpose=purpose,
        sample_index=c.sample_index, seed=c.seed, text=c.text, token_ids=c.token_ids,
        prompt_tokens=c.prompt_tokens, completion_tokens=len(c.token_ids), finish_reason=c.finish_reason,
        sum_logprob=c.sum_logprob, sampling_json=params.model_dump(),
    )


def pair_id(round_id: str, completion_a: str, completion_b: str) -> str:
    return stable_id("pair", round_id, completion_a, completion_b)


def pair_samples(completions: Sequence[CompletionRow], round_id: str) -> list[PairRow]:
    """n=2 per prompt: sample 0 vs sample 1 of the same prompt."""
    by_prompt: dict[str, dict[int, CompletionRow]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, {})[c.sample_index] = c
    pairs = []
    for prompt_id, samples in by_prompt.items():
        a, b = samples[0], samples[1]
        pairs.append(PairRow(pair_id=pair_id(round_id, a.completion_id, b.completion_id), round_id=round_id,
                             prompt_id=prompt_id, purpose=a.purpose, completion_a=a.completion_id, completion_b=b.completion_id))
    return pairs
