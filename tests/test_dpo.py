"""The DPO core: log 2 at init, a frozen reference, summed logps over completion tokens only."""

from __future__ import annotations

import math

import pytest
import torch

from lm.loading import encode_chat, load_model, load_tokenizer
from lm.logprobs import collate, sequence_logps
from training.dpo_loss import dpo_loss
from training.trainer import DPOParams, PreferencePair, add_lora, pair_logps, reference_logps, train_dpo

SYSTEM = "You are a support agent."


def make_pairs(tokenizer, n: int, seed: int = 0) -> list[PreferencePair]:
    """Pairs with real chat-templated prompts and random completion tokens ending in <|im_end|>."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        prompt = encode_chat(tokenizer, SYSTEM, f"Where is my order #LS-{1000 + i}? It has been {i + 3} days.")
        chosen = torch.randint(100, 49000, (5 + i % 4,), generator=g).tolist() + [tokenizer.eos_token_id]
        rejected = torch.randint(100, 49000, (9 - i % 3,), generator=g).tolist() + [tokenizer.eos_token_id]
        pairs.append(PreferencePair(pair_id=str(i), prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected))
    return pairs


def test_dpo_loss_matches_the_formula():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -16.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.2)
    expected = [-math.log(1 / (1 + math.exp(-0.2 * ((-10 + 11) - (-12 + 11))))),
                -math.log(1 / (1 + math.exp(-0.2 * ((-20 + 19) - (-15 + 16)))))]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.2, -0.2])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.2, 0.2])


def test_loss_is_log2_at_init_on_tiny_model(tiny_model):
    model, tokenizer = tiny_model
    pairs = make_pairs(tokenizer, 4)
    peft_model = add_lora(model, DPOParams(lora_r=4), seed=0)
    ref_c, ref_r = reference_logps(peft_model, pairs, tokenizer.pad_token_id, batch_size=4)
    pol_c, pol_r = pair_logps(peft_model, pairs, tokenizer.pad_token_id)
    loss = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1).losses.mean()
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    # and the trainer's own first step reports the same number
    metrics = train_dpo(peft_model, pairs, DPOParams(batch_size=4, epochs=1, lora_r=4), tokenizer.pad_token_id).metrics
    assert metrics[0].loss == pytest.approx(math.log(2), abs=1e-6)


def test_reference_is_frozen_while_policy_moves(tiny_model):
    model, tokenizer = tiny_model
    pairs = make_pairs(tokenizer, 4)
    peft_model = add_lora(model, DPOParams(lora_r=4), seed=0)
    ref_before = reference_logps(peft_model, pairs, tokenizer.pad_token_id, batch_size=4)
    with torch.no_grad():
        policy_before = pair_logps(peft_model, pairs, tokenizer.pad_token_id)
    metrics = train_dpo(peft_model, pairs, DPOParams(batch_size=2, epochs=3, lora_r=4, learning_rate=5e-3), tokenizer.pad_token_id).metrics
    ref_after = reference_logps(peft_model, pairs, tokenizer.pad_token_id, batch_size=4)
    with torch.no_grad():
        policy_after = pair_logps(peft_model, pairs, tokenizer.pad_token_id)
    for before, after in zip(ref_before, ref_after):
        assert torch.equal(before, after)
    assert not torch.allclose(policy_before[0], policy_after[0], atol=1e-3)
    # training does what DPO should: the chosen-vs-rejected margin grows
    assert metrics[-1].reward_margin > metrics[0].reward_margin
    assert metrics[-1].loss < metrics[0].loss


def test_logps_count_exactly_the_completion_tokens(tiny_model):
    model, tokenizer = tiny_model
    eos = tokenizer.eos_token_id
    prompts = [encode_chat(tokenizer, SYSTEM, "short"), encode_chat(tokenizer, SYSTEM, "a much longer question about a refund for order 7")]
    completions = [[500, 600, eos], [700, 800, 900, 1000, eos]]
    batch = collate(prompts, completions, tokenizer.pad_token_id)
    # the mask covers exactly the completion tokens and the end-of-turn token, never the prompt
    assert batch.completion_mask.sum(-1).tolist() == [3.0, 5.0]
    for i, c in enumerate(completions):
        kept = batch.completion_ids[i][batch.completion_mask[i].bool()].tolist()
        assert kept == c and kept[-1] == eos
        real = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        assert real == prompts[i] + c

    # and the summed logp equals a plain unpadded forward over each sequence, summed over completion positions
    with torch.no_grad():
        batched = sequence_logps(model, batch)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([p + c])
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)   # (T, V)
            manual = sum(float(logps[len(p) - 1 + j, tok]) for j, tok in enumerate(c))
            assert float(batched[i]) == pytest.approx(manual, abs=1e-4)


@pytest.mark.slow
def test_loss_is_log2_at_init_on_real_smollm2(smollm2_dir):
    from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample

    tokenizer = load_tokenizer(smollm2_dir)
    model = load_model(smollm2_dir)
    requests = [SampleRequest(key=str(i), system=SYSTEM, user=q) for i, q in enumerate(
        ["My parcel arrived damaged, what now?", "How do I change the email on my account?"])]
    samples = sample(TransformersSampler(model, tokenizer), requests, SamplingParams(n=2, max_new_tokens=24, batch_size=4), seed=1)
    by_key = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    pairs = [PreferencePair(pair_id=k, prompt_ids=encode_chat(tokenizer, SYSTEM, requests[int(k)].user),
                            chosen_ids=v[0].token_ids, rejected_ids=v[1].token_ids) for k, v in by_key.items()]
    peft_model = add_lora(model, DPOParams(), seed=0)
    metrics = train_dpo(peft_model, pairs, DPOParams(batch_size=2, epochs=1), tokenizer.pad_token_id).metrics
    assert metrics[0].loss == pytest.approx(math.log(2), abs=1e-5)
    assert metrics[0].reward_margin == pytest.approx(0.0, abs=1e-5)
