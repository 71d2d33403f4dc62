"""Sampling: seeded and reproducible, left-padded batches, the recorded logprob is the policy's own."""

from __future__ import annotations

import pytest
import torch

from lm.loading import encode_chat, load_model, load_tokenizer
from lm.logprobs import collate, sequence_logps
from prompts.loader import Prompt
from sampling.sampler import SampleRequest, SamplingParams, sample
from sampling.stage import sample_for_round
from store.db import Store

REQUESTS = [SampleRequest(key=f"k{i}", system="You are a support agent.", user=u) for i, u in enumerate(
    ["Where is my parcel?", "I was charged twice for order #LS-20931, please fix it today.", "Cancel my Plus membership."])]


def mean_token_gap(model, tokenizer, samples) -> float:
    """Mean |recorded - recomputed| logprob per token, recomputing with an unbatched forward pass."""
    by_key = {r.key: r for r in REQUESTS}
    gaps = []
    with torch.no_grad():
        for s in samples:
            prompt = encode_chat(tokenizer, by_key[s.key].system, by_key[s.key].user)
            recomputed = float(sequence_logps(model, collate([prompt], [s.token_ids], tokenizer.pad_token_id))[0])
            gaps.append(abs(recomputed - s.sum_logprob) / len(s.token_ids))
    return sum(gaps) / len(gaps)


def test_same_seed_same_text_and_logprob_matches_forward(tiny_model):
    model, tokenizer = tiny_model
    params = SamplingParams(n=2, max_new_tokens=12, batch_size=4)
    first = sample(model, tokenizer, REQUESTS, params, seed=7)
    again = sample(model, tokenizer, REQUESTS, params, seed=7)
    other = sample(model, tokenizer, REQUESTS, params, seed=8)
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.token_ids for s in first] != [s.token_ids for s in other]
    assert len(first) == 6 and {(s.key, s.sample_index) for s in first} == {(r.key, i) for r in REQUESTS for i in (0, 1)}
    for s in first:
        assert 0 < len(s.token_ids) <= 12
        assert (s.finish_reason == "stop") == (s.token_ids[-1] == tokenizer.eos_token_id)
    assert mean_token_gap(model, tokenizer, first) < 1e-4


def test_stored_batches_are_not_resampled(tiny_model, tmp_path):
    model, tokenizer = tiny_model
    prompts = [Prompt(text=r.user, source="t") for r in REQUESTS]
    params = SamplingParams(n=2, max_new_tokens=6, batch_size=2)
    calls = []
    with Store(tmp_path / "s.duckdb") as store:
        rows = sample_for_round(store, model, tokenizer, "m", "r", prompts, "sys", params, 3, "train",
                                progress=lambda done, total: calls.append((done, total)))
        assert len(rows) == 6 and store.count_rows()["completions"] == 6
        calls.clear()
        again = sample_for_round(store, model, tokenizer, "m", "r", prompts, "sys", params, 3, "train",
                                 progress=lambda done, total: calls.append((done, total)))
        assert again == rows and store.count_rows()["completions"] == 6
        assert calls == [(6, 6)]  # everything was already stored: no batch was sampled


@pytest.mark.slow
def test_sampling_logprob_matches_forward_on_real_smollm2(smollm2_dir):
    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    samples = sample(model, tokenizer, REQUESTS, SamplingParams(n=2, max_new_tokens=48, batch_size=6), seed=0)
    assert any(s.finish_reason == "stop" for s in samples) or all(len(s.token_ids) == 48 for s in samples)
    assert mean_token_gap(model, tokenizer, samples) < 1e-3
