"""Sampling as a round stage: plan, skip what the store already has, sample the rest, store it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from prompts.loader import Prompt
from sampling.sampler import SampleBatch, SampledCompletion, Sampler, SampleRequest, SamplingParams, plan_batches, sample
from store.db import Store
from store.ids import stable_id
from store.rows import CompletionRow, PairRow

Progress = Callable[[int, int], None]


def completion_id(round_id: str, prompt_id: str, model_id: str, sample_index: int, seed: int, purpose: str) -> str:
    return stable_id("completion", round_id, prompt_id, model_id, sample_index, seed, purpose)


def sample_for_round(
    store: Store,
    sampler: Sampler,
    model_id: str,
    round_id: str,
    prompts: Sequence[Prompt],
    system_prompt: str,
    params: SamplingParams,
    seed: int,
    purpose: str,
    progress: Progress = lambda done, total: None,
    first_sample: int = 0,
) -> list[CompletionRow]:
    """Completions for every prompt (params.n each, sample indices from first_sample on); batches
    already stored are not resampled."""
    requests = [SampleRequest(key=p.prompt_id, system=system_prompt, user=p.text) for p in prompts]
    plan = plan_batches(len(requests), params, seed, first_sample)

    def ids_of(batch: SampleBatch) -> list[str]:
        return [completion_id(round_id, requests[r].key, model_id, s, batch.seed, purpose) for r, s in batch.rows]

    all_ids = [cid for batch in plan for cid in ids_of(batch)]
    stored = set(store.by_ids(CompletionRow, all_ids))
    total = len(all_ids)
    done = [len(stored)]
    progress(done[0], total)

    def store_batch(completions: list[SampledCompletion]) -> None:
        rows = [_to_row(c, round_id, model_id, purpose, params, sampler.backend) for c in completions]
        store.append(rows)
        done[0] += len(rows)
        progress(done[0], total)

    sample(sampler, requests, params, seed,
           skip_batch=lambda batch: all(cid in stored for cid in ids_of(batch)), on_batch=store_batch, first_sample=first_sample)
    by_id = store.by_ids(CompletionRow, all_ids)
    return [by_id[cid] for cid in all_ids]


def _to_row(c: SampledCompletion, round_id: str, model_id: str, purpose: str, params: SamplingParams,
            backend: str) -> CompletionRow:
    return CompletionRow(
        completion_id=completion_id(round_id, c.key, model_id, c.sample_index, c.seed, purpose),
        round_id=round_id, prompt_id=c.key, model_id=model_id, purpose=purpose,
        sample_index=c.sample_index, seed=c.seed, text=c.text, token_ids=c.token_ids,
        prompt_tokens=c.prompt_tokens, completion_tokens=len(c.token_ids), finish_reason=c.finish_reason,
        sum_logprob=c.sum_logprob, sampling_json=params.model_dump() | {"backend": backend},
    )


def collected_rows(round_id: str, collected: Sequence[tuple[SampledCompletion, dict]], backend: str,
                   default_model: str) -> list[CompletionRow]:
    """Replies that came from elsewhere (sampling/collected.py) as the round's train completions; what
    the source said about each (its row, ids, model, metadata) is kept in its sampling settings."""
    rows = []
    for c, about in collected:
        model_id = about.get("model") or default_model
        rows.append(CompletionRow(
            completion_id=completion_id(round_id, c.key, model_id, c.sample_index, c.seed, "train"),
            round_id=round_id, prompt_id=c.key, model_id=model_id, purpose="train", sample_index=c.sample_index,
            seed=c.seed, text=c.text, token_ids=c.token_ids, prompt_tokens=c.prompt_tokens,
            completion_tokens=len(c.token_ids), finish_reason="stop", sum_logprob=c.sum_logprob,
            sampling_json={"backend": backend, **about}))
    return rows


def pair_id(round_id: str, completion_a: str, completion_b: str, pairing: str = "pair") -> str:
    parts = (round_id, completion_a, completion_b) if pairing == "pair" else (round_id, completion_a, completion_b, pairing)
    return stable_id("pair", *parts)


def _pair(round_id: str, a: CompletionRow, b: CompletionRow, pairing: str) -> PairRow:
    return PairRow(pair_id=pair_id(round_id, a.completion_id, b.completion_id, pairing), round_id=round_id,
                   prompt_id=a.prompt_id, purpose=a.purpose, completion_a=a.completion_id,
                   completion_b=b.completion_id, pairing=pairing)


def pair_samples(completions: Sequence[CompletionRow], round_id: str) -> list[PairRow]:
    """The comparisons to judge. n=2: sample 0 vs sample 1 ("pair", a training pair as is).

    n>2: every two samples of a prompt ("round_robin"); these only rank the samples, and
    `select_max_min` then picks each prompt's training pair.
    """
    by_prompt: dict[str, list[CompletionRow]] = {}
    for c in sorted(completions, key=lambda c: c.sample_index):
        by_prompt.setdefault(c.prompt_id, []).append(c)
    pairs = []
    for samples in by_prompt.values():
        if len(samples) == 2:
            pairs.append(_pair(round_id, samples[0], samples[1], "pair"))
        else:
            pairs += [_pair(round_id, a, b, "round_robin") for i, a in enumerate(samples) for b in samples[i + 1:]]
    return pairs


def select_max_min(round_robin: Sequence[PairRow], winners: Mapping[str, str | None],
                   completions: Sequence[CompletionRow], round_id: str) -> list[PairRow]:
    """Online-RLHF "max_min": per prompt, the most-winning sample against the least-winning one.

    `winners` maps a round-robin pair id to "a" or "b" when its verdict is trustworthy (else None
    or absent: ties and inconsistent verdicts count for neither). A sample's score is its wins minus
    its losses; a prompt whose best and worst samples score the same yields no pair. The chosen
    pair keeps the orientation of its round-robin comparison, so its judgments come from the
    judge cache.
    """
    by_id = {c.completion_id: c for c in completions}
    score = {c.completion_id: 0 for c in completions}
    by_prompt: dict[str, list[PairRow]] = {}
    for p in round_robin:
        by_prompt.setdefault(p.prompt_id, []).append(p)
        winner = winners.get(p.pair_id)
        if winner in ("a", "b"):
            won, lost = (p.completion_a, p.completion_b) if winner == "a" else (p.completion_b, p.completion_a)
            score[won] += 1
            score[lost] -= 1
    selected = []
    for pairs in by_prompt.values():
        samples = sorted({c for p in pairs for c in (p.completion_a, p.completion_b)}, key=lambda c: by_id[c].sample_index)
        best = max(samples, key=lambda c: score[c])   # first of equals: the lowest sample index
        worst = min(samples, key=lambda c: score[c])
        if score[best] == score[worst]:
            continue
        match = next(p for p in pairs if {p.completion_a, p.completion_b} == {best, worst})
        selected.append(_pair(round_id, by_id[match.completion_a], by_id[match.completion_b], "max_min"))
    return selected
