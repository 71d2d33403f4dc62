"""The DPO core: log 2 at init, a frozen reference, summed logps over completion tokens only."""

from __future__ import annotations

import math

import pytest
import torch

from lm.loading import encode_chat, load_model, load_tokenizer
from lm.logprobs import collate, sequence_logps
from training.dpo_loss import dpo_loss
from training.pairs import PreferencePair, pair_logps
from training.reference import reference_logps
from training.trainer import DPOParams, add_lora, train_dpo

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


def test_ipo_hinge_and_label_smoothing_follow_their_formulas():
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])
    h = (-10 + 11) - (-12 + 11)  # 2
    assert float(dpo_loss(pc, pr, rc, rr, beta=0.25, loss_type="ipo").losses) == pytest.approx((h - 1 / 0.5) ** 2)
    assert float(dpo_loss(pc, pr, rc, rr, beta=0.25, loss_type="hinge").losses) == pytest.approx(max(0.0, 1 - 0.25 * h))
    smoothed = float(dpo_loss(pc, pr, rc, rr, beta=0.25, label_smoothing=0.1).losses)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert smoothed == pytest.approx(-0.9 * math.log(sig(0.5)) - 0.1 * math.log(sig(-0.5)))


def audited(chosen_len: int, rejected_len: int, i: int, chosen_text: str = "fine", rejected_text: str = "fine"):
    from training.audit import AuditedPair

    return AuditedPair(pair=PreferencePair(pair_id=str(i), prompt_ids=[1], chosen_ids=[5] * chosen_len, rejected_ids=[6] * rejected_len),
                       chosen_text=chosen_text, rejected_text=rejected_text)


def test_confound_audit_measures_length_and_style():
    from training.audit import audit

    pairs = [audited(20, 10, 0, "Sorry! - one\n- two", "ok"), audited(10, 20, 1, "ok", "Sorry"), audited(30, 10, 2), audited(7, 7, 3)]
    a = audit(pairs)
    assert a.chosen_longer_share == pytest.approx(2 / 3)  # the equal-length pair counts for neither side
    assert a.mean_log_length_ratio == pytest.approx((math.log(2) + math.log(0.5) + math.log(3) + 0) / 4)
    assert a.style_preference == {"apology": 0.0, "list": 0.25, "exclamation": 0.25}


def test_chosen_longer_data_is_balanced_or_refused_per_config():
    from training.audit import audit
    from training.data import DataPolicy, prepare_data

    longer = [audited(20 + i, 10, i) for i in range(8)] + [audited(10, 12 + i, 10 + i) for i in range(2)]  # 80% chosen-longer
    kept, refusal = prepare_data(longer, DataPolicy(min_pairs=2, confounds="balance"))
    assert refusal is None and 0.4 <= audit(kept).chosen_longer_share <= 0.6
    assert {p.pair.pair_id for p in kept} == {"0", "1", "2", "10", "11"}  # the most lopsided long-chosen pairs went
    _, refusal = prepare_data(longer, DataPolicy(min_pairs=2, confounds="refuse"))
    assert refusal is not None and "chosen is longer in 80%" in refusal.reason and refusal.audit.n_pairs == 10
    _, refusal = prepare_data(longer, DataPolicy(min_pairs=6, confounds="balance"))
    assert refusal is not None and "balancing leaves 5 pairs (< min_pairs 6)" in refusal.reason
    kept, refusal = prepare_data(longer, DataPolicy(min_pairs=2, confounds="off"))
    assert refusal is None and len(kept) == 10


def sampled_pairs(model, tokenizer, n: int) -> list[PreferencePair]:
    """Pairs of completions the model itself sampled, carrying their recorded log-probs."""
    from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample

    requests = [SampleRequest(key=str(i), system=SYSTEM, user=f"Where is order #LS-{i}?") for i in range(n)]
    samples = sample(TransformersSampler(model, tokenizer), requests, SamplingParams(n=2, max_new_tokens=12, batch_size=8), seed=3)
    by_key: dict[str, list] = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    return [PreferencePair(pair_id=k, prompt_ids=encode_chat(tokenizer, SYSTEM, requests[int(k)].user),
                           chosen_ids=a.token_ids, rejected_ids=b.token_ids,
                           chosen_sampled_logp=a.sum_logprob, rejected_sampled_logp=b.sum_logprob)
            for k, (a, b) in by_key.items()]


def test_reference_from_sampling_gives_the_recomputed_loss_and_bad_records_fall_back(tiny_model):
    from training.reference import choose_reference

    model, tokenizer = tiny_model
    pairs = sampled_pairs(model, tokenizer, 6)
    peft_model = add_lora(model, DPOParams(lora_r=4), seed=0)
    pad = tokenizer.pad_token_id
    (sc, sr), choice = choose_reference(peft_model, pairs, "auto", check_pairs=2, tolerance=1e-3, batch_size=4, pad_id=pad, seed=0)
    assert choice.source == "sampling" and choice.mean_token_gap < 1e-4
    fc, fr = reference_logps(peft_model, pairs, tokenizer.pad_token_id, batch_size=4)
    assert torch.allclose(sc, fc, atol=1e-3) and torch.allclose(sr, fr, atol=1e-3)
    # one optimizer step later, the loss on either reference is the same to the tolerance
    with torch.no_grad():
        pc, pr = pair_logps(peft_model, pairs, tokenizer.pad_token_id)
    assert float(dpo_loss(pc, pr, sc, sr).losses.mean()) == pytest.approx(float(dpo_loss(pc, pr, fc, fr).losses.mean()), abs=1e-4)

    wrong = [p.model_copy(update={"chosen_sampled_logp": p.chosen_sampled_logp - 5.0}) for p in pairs]  # e.g. another template
    (wc, _), fallback = choose_reference(peft_model, wrong, "auto", check_pairs=2, tolerance=1e-3, batch_size=4, pad_id=pad, seed=0)
    assert fallback.source == "forward" and "differ" in fallback.why and torch.allclose(wc, fc)


def test_collapse_guard_stops_training(tiny_model):
    model, tokenizer = tiny_model
    pairs = make_pairs(tokenizer, 8)
    peft_model = add_lora(model, DPOParams(lora_r=4), seed=0)
    # a bound this tight trips on the tiny model's first step where both rewards dip
    params = DPOParams(batch_size=2, epochs=4, lora_r=4, learning_rate=0.5, warmup_ratio=0, lr_schedule="constant",
                       collapse_reward=0.02)
    result = train_dpo(peft_model, pairs, params, tokenizer.pad_token_id)
    assert result.collapsed and len(result.metrics) < 16
    last = result.metrics[-1]
    assert last.reward_chosen < -0.02 and last.reward_rejected < -0.02
    assert all(m.reward_chosen >= -0.02 or m.reward_rejected >= -0.02 for m in result.metrics[:-1])


def test_training_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tiny_model_dir, tmp_path):
    from peft import get_peft_model_state_dict

    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = make_pairs(tokenizer, 8)
    params = DPOParams(batch_size=2, epochs=1, lora_r=4, learning_rate=1e-2, checkpoint_every=1)

    def fresh():
        return add_lora(load_model(tiny_model_dir), params, seed=0)

    whole_model = fresh()
    whole = train_dpo(whole_model, pairs, params, tokenizer.pad_token_id)
    uninterrupted = get_peft_model_state_dict(whole_model)

    class Crash(Exception):
        pass

    def crash_at_step_2(m):
        # A crash simulated in-process (the kill -9 tests of whole rounds use real processes): it
        # happens after step 2's update, before its checkpoint, so the last checkpoint is after step 1.
        if m.step == 2:
            raise Crash()

    with pytest.raises(Crash):
        train_dpo(fresh(), pairs, params, tokenizer.pad_token_id, on_step=crash_at_step_2, checkpoint_dir=tmp_path / "b")
    resumed_model = fresh()
    resumed = train_dpo(resumed_model, pairs, params, tokenizer.pad_token_id, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_step == 2 and [m.step for m in resumed.metrics] == [2, 3]
    assert [m.loss for m in resumed.metrics] == pytest.approx([m.loss for m in whole.metrics[2:]], abs=1e-6)
    for name, tensor in get_peft_model_state_dict(resumed_model).items():
        assert torch.allclose(tensor, uninterrupted[name], atol=1e-6), name


def test_confidence_weighting_gives_a_zero_confidence_pair_no_pull(tiny_model_dir):
    """One step on [zero-confidence pair, sure pair] with confidence weighting = one step on the sure
    pair alone: the weights (0, 2) cancel the mean over two pairs. Unweighted, the step differs."""
    from peft import get_peft_model_state_dict

    tokenizer = load_tokenizer(tiny_model_dir)
    unsure, sure = make_pairs(tokenizer, 2)
    unsure = unsure.model_copy(update={"confidence": 0.0})
    sure = sure.model_copy(update={"confidence": 0.3})
    params = DPOParams(batch_size=2, epochs=1, lora_r=4, learning_rate=1e-2, warmup_ratio=0, shuffle=False)

    def one_step(pairs, **update):
        model = add_lora(load_model(tiny_model_dir), params, seed=0)
        train_dpo(model, pairs, params.model_copy(update=update), tokenizer.pad_token_id)
        return get_peft_model_state_dict(model)

    alone = one_step([sure], batch_size=1)
    weighted = one_step([unsure, sure], pair_weighting="confidence")
    unweighted = one_step([unsure, sure])
    for name, tensor in alone.items():
        assert torch.allclose(weighted[name], tensor, atol=1e-6), name
    assert any(not torch.allclose(unweighted[name], tensor, atol=1e-4) for name, tensor in alone.items())
