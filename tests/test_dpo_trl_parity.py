"""Our DPO trainer against TRL's DPOTrainer, step by step, on the same model, adapter, batches and tokens.

Both sides train a LoRA adapter (r=4, all-linear) on the tiny random Llama, fp32, no gradient
checkpointing, batches in dataset order, constant learning rate, no warm-up, no weight decay, the
same gradient clipping; the reference is the model with the adapter disabled. Each side reports
its metrics before the step's update, so step 1 is log 2 with zero rewards and steps 2-3 compare
the updates.

Identical tokens: TRL 1.16 does not accept pre-tokenised `prompt_ids`/`chosen_ids`/`rejected_ids`
columns (its `_prepare_dataset` always extracts a prompt, then tokenises text: a dataset without
"chosen" fails with KeyError 'chosen'), and its conversational tokenisation differs from our
sampled completions (see the last test). So TRL gets our token ids through a subclass that skips
`_prepare_dataset`; everything after it (collator, fused log-probs, losses, metrics, optimizer) is
TRL's own.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from test_dpo import SYSTEM, make_pairs
from transformers import TrainerCallback

from lm.loading import encode_chat, load_model, load_tokenizer
from training.trainer import DPOParams, add_lora, train_dpo

STEPS, BATCH, LR, BETA, R, ALPHA, SEED = 3, 4, 1e-2, 0.1, 4, 8, 0
TOL = 1e-4
METRICS = {"reward_chosen": "rewards/chosen", "reward_rejected": "rewards/rejected",
           "reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracies"}


class _Logs(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/chosen" in logs:  # one per step (logging_steps=1); the run summary has none
            self.steps.append(dict(logs))


LABEL_SMOOTHING = {"robust": 0.1}  # robust DPO's assumed flip rate (with 0 it is the sigmoid loss)


def _train_both(loss_type: str, model_dir: Path, out_dir: str) -> dict:
    """Train STEPS steps with each trainer; their per-step metrics and initial adapters."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids

    tokenizer = load_tokenizer(model_dir)
    pairs = make_pairs(tokenizer, STEPS * BATCH)
    params = DPOParams(loss_type=loss_type, beta=BETA, learning_rate=LR, lr_schedule="constant", warmup_ratio=0,
                       batch_size=BATCH, max_steps=STEPS, max_grad_norm=1.0, shuffle=False, group_by_length=False,
                       reference="forward", lora_r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                       label_smoothing=LABEL_SMOOTHING.get(loss_type, 0.0))
    ours_model = add_lora(load_model(model_dir), params, seed=SEED)
    ours_init = {k: v.clone() for k, v in get_peft_model_state_dict(ours_model).items()}
    ours = train_dpo(ours_model, pairs, params, tokenizer.pad_token_id, seed=SEED).metrics

    logs = _Logs()
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        bf16=False, activation_checkpointing=False, use_cpu=True, train_sampling_strategy="sequential",
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=SEED,
        beta=BETA, loss_type=[loss_type], max_length=None, label_smoothing=LABEL_SMOOTHING.get(loss_type, 0.0),
    )
    # Same LoraConfig as add_lora; TRL seeds (set_seed(args.seed)) right before get_peft_model, as add_lora does.
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}
                                 for p in pairs])
    trainer = PreTokenizedDPOTrainer(model=load_model(model_dir), args=args, train_dataset=dataset,
                                     processing_class=tokenizer, peft_config=lora, callbacks=[logs])
    trl_init = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()}
    trainer.train()
    return {"ours": ours, "trl": logs.steps, "ours_init": ours_init, "trl_init": trl_init}


_RUNS: dict[tuple[str, str], dict] = {}


def runs(loss_type: str, tiny_model_dir, tmp_path_factory) -> dict:
    """Each loss type trains once per session; its three tests share the result."""
    key = (loss_type, str(tiny_model_dir))
    if key not in _RUNS:
        _RUNS[key] = _train_both(loss_type, tiny_model_dir, str(tmp_path_factory.mktemp(f"trl-{loss_type}")))
    return _RUNS[key]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_trl_gets_the_same_lora_modules_and_initial_weights(loss_type, tiny_model_dir, tmp_path_factory):
    r = runs(loss_type, tiny_model_dir, tmp_path_factory)
    assert set(r["ours_init"]) == set(r["trl_init"])
    assert len(r["ours_init"]) == 2 * 2 * 7  # 2 layers x (q k v o gate up down) x (A, B): no lm_head
    assert not any("lm_head" in k for k in r["ours_init"])
    for name, tensor in r["ours_init"].items():
        assert torch.equal(tensor, r["trl_init"][name]), name


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "robust"])
def test_loss_grad_norm_and_lr_match_trl_step_by_step(loss_type, tiny_model_dir, tmp_path_factory):
    r = runs(loss_type, tiny_model_dir, tmp_path_factory)
    ours, trl = r["ours"], r["trl"]
    assert len(ours) == len(trl) == STEPS
    assert ours[0].loss == pytest.approx(math.log(2) if loss_type in ("sigmoid", "robust") else (1 / (2 * BETA)) ** 2, abs=1e-6)
    for step, (m, logged) in enumerate(zip(ours, trl)):
        assert m.loss == pytest.approx(logged["loss"], abs=TOL), step
        assert m.grad_norm == pytest.approx(logged["grad_norm"], abs=TOL), step
        assert m.lr == pytest.approx(logged["learning_rate"], rel=1e-9), step
    assert ours[-1].loss < ours[0].loss - 100 * TOL  # the comparison is not of two untrained models


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_rewards_match_trl_step_by_step(loss_type, tiny_model_dir, tmp_path_factory):
    r = runs(loss_type, tiny_model_dir, tmp_path_factory)
    ours, trl = r["ours"], r["trl"]
    for step, (m, logged) in enumerate(zip(ours, trl)):
        for field, key in METRICS.items():
            assert getattr(m, field) == pytest.approx(logged[key], abs=TOL), (step, field)
    assert abs(trl[-1]["rewards/margins"]) > 100 * TOL  # rewards moved well beyond the tolerance


def test_trl_conversational_tokens_are_our_prompt_and_completion_plus_a_newline(tiny_model_dir, tmp_path):
    """Why TRL gets token ids above: from chat messages it also trains on the "\\n" after <|im_end|>.

    Our sampled completions stop at <|im_end|> (the sampler keeps it, DPO scores it); TRL renders the
    assistant turn with the chat template, which ends every turn with "<|im_end|>\\n".
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(tiny_model_dir)
    user, chosen, rejected = "Where is my order?", "It shipped today.", "No idea."
    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
                                  "chosen": [{"role": "assistant", "content": chosen}],
                                  "rejected": [{"role": "assistant", "content": rejected}]}])
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, use_cpu=True, report_to=[])
    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")
    row = DPOTrainer(model=load_model(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=lora).train_dataset[0]
    newline = tokenizer.encode("\n", add_special_tokens=False)
    assert row["prompt_ids"] == encode_chat(tokenizer, SYSTEM, user)
    for text, ids in [(chosen, row["chosen_ids"]), (rejected, row["rejected_ids"])]:
        assert ids == tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] + newline
