"""Sampling: seeded and reproducible, left-padded batches, the recorded logprob is the policy's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lm.loading import encode_chat, load_model, load_tokenizer
from lm.logprobs import collate, sequence_logps
from prompts.loader import Prompt
from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, plan_batches, prompt_requests, sample, sequence_seed
from sampling.stage import pair_samples, sample_for_round, select_max_min
from sampling.vllm_engine import VLLMSettings, choose_backend
from store.db import Store
from store.rows import CompletionRow

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
    first = sample(TransformersSampler(model, tokenizer), REQUESTS, params, seed=7)
    again = sample(TransformersSampler(model, tokenizer), REQUESTS, params, seed=7)
    other = sample(TransformersSampler(model, tokenizer), REQUESTS, params, seed=8)
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
        rows = sample_for_round(store, TransformersSampler(model, tokenizer), "m", "r", prompts, "sys", params, 3, "train",
                                progress=lambda done, total: calls.append((done, total)))
        assert len(rows) == 6 and store.count_rows()["completions"] == 6
        calls.clear()
        again = sample_for_round(store, TransformersSampler(model, tokenizer), "m", "r", prompts, "sys", params, 3, "train",
                                 progress=lambda done, total: calls.append((done, total)))
        assert again == rows and store.count_rows()["completions"] == 6
        assert calls == [(6, 6)]  # everything was already stored: no batch was sampled


@pytest.mark.slow
def test_sampling_logprob_matches_forward_on_real_smollm2(smollm2_dir):
    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    samples = sample(TransformersSampler(model, tokenizer), REQUESTS, SamplingParams(n=2, max_new_tokens=48, batch_size=6), seed=0)
    assert any(s.finish_reason == "stop" for s in samples) or all(len(s.token_ids) == 48 for s in samples)
    assert mean_token_gap(model, tokenizer, samples) < 1e-3


def completion(prompt: str, index: int) -> CompletionRow:
    return CompletionRow(completion_id=f"{prompt}-{index}", round_id="r", prompt_id=prompt, model_id="m", purpose="train",
                         sample_index=index, seed=0, text=f"text {index}", token_ids=[1, 2], prompt_tokens=3,
                         completion_tokens=2, finish_reason="stop", sum_logprob=-1.0, sampling_json={})


def test_n2_is_one_pair_and_n4_is_a_round_robin():
    two = pair_samples([completion("p", 1), completion("p", 0)], "r")
    assert [(p.completion_a, p.completion_b, p.pairing) for p in two] == [("p-0", "p-1", "pair")]
    four = pair_samples([completion("p", i) for i in range(4)], "r")
    assert len(four) == 6 and {p.pairing for p in four} == {"round_robin"}
    assert {(p.completion_a, p.completion_b) for p in four} == {(f"p-{i}", f"p-{j}") for i in range(4) for j in range(i + 1, 4)}
    assert len({p.pair_id for p in four}) == 6


def test_max_min_takes_the_most_winning_against_the_least_winning_sample():
    samples = [completion(p, i) for p in ("p", "q") for i in range(3)]
    robin = pair_samples(samples, "r")
    by_ends = {(p.completion_a, p.completion_b): p.pair_id for p in robin}
    winners = {
        by_ends[("p-0", "p-1")]: "b",    # p-1 beats p-0
        by_ends[("p-1", "p-2")]: "a",    # p-1 beats p-2
        by_ends[("p-0", "p-2")]: "a",    # p-0 beats p-2  -> scores p-1 +2, p-0 0, p-2 -2
        by_ends[("q-0", "q-1")]: None,   # q: nothing trustworthy -> no training pair
        by_ends[("q-0", "q-2")]: "tie",
    }
    (selected,) = select_max_min(robin, winners, samples, "r")
    assert {selected.completion_a, selected.completion_b} == {"p-1", "p-2"}
    assert (selected.completion_a, selected.completion_b) == ("p-1", "p-2")  # orientation of the judged comparison
    assert selected.pairing == "max_min" and selected.pair_id != by_ends[("p-1", "p-2")]


def test_backend_choice_auto_falls_back_to_transformers_and_says_why(tmp_path):
    missing = VLLMSettings(python=str(tmp_path / "no-python"))
    assert choose_backend("auto", missing) == ("transformers", f"auto: vLLM is not usable ({tmp_path / 'no-python'} does not exist); "
                                                                "set sampler.vllm.python to a Python with vLLM")
    backend, why = choose_backend("auto", VLLMSettings())  # this test venv has no vllm (it lives in .venv-vllm)
    assert backend == "transformers" and "`import vllm` fails" in why and "ModuleNotFoundError" in why
    assert choose_backend("vllm", missing)[0] == "vllm-engine"  # asked for explicitly: no fallback, it fails loudly later
    server = VLLMSettings(server_url="http://127.0.0.1:8000", served_model="smollm2")
    assert choose_backend("auto", server)[0] == "vllm-server"
    assert choose_backend("transformers", server)[0] == "transformers"


def test_engine_settings_on_this_cpu_are_the_ones_that_work():
    kwargs = VLLMSettings(dtype="bfloat16", tensor_parallel_size=2).engine_kwargs(Path("/m"), enable_lora=True)
    if not torch.cuda.is_available():
        assert kwargs["dtype"] == "float32" and kwargs["enforce_eager"] and "tensor_parallel_size" not in kwargs
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == 16 and kwargs["model"] == "/m"


def test_vllm_gets_one_request_per_prompt_with_all_its_samples_in_the_batch():
    """n = k: a batch's consecutive rows of one prompt become one request; a prompt split across two
    batches is two requests, each seeded from its first sample; both sides of an evaluation plan alike."""
    requests = [SampleRequest(key=f"p{i}", system="s", user=f"u{i}") for i in range(3)]
    plan = plan_batches(3, SamplingParams(n=4, batch_size=6), seed=1, first_sample=4)
    grouped = [prompt_requests(requests, batch) for batch in plan]
    assert [[(g.request, g.first_sample, g.n) for g in batch] for batch in grouped] == [
        [(0, 4, 4), (1, 4, 2)], [(1, 6, 2), (2, 4, 4)]]
    assert grouped[0][0].seed == sequence_seed(plan[0].seed, "p0", 4)
    assert plan == plan_batches(3, SamplingParams(n=4, batch_size=6), seed=1, first_sample=4)  # the other side's plan
    assert plan[0].seed != plan_batches(3, SamplingParams(n=4, batch_size=6), seed=1)[0].seed  # a later draw: fresh seeds
