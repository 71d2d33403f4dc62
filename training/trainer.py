"""DPO on a LoRA adapter: setup, reference log-probs, then a short explicit training loop.

The reference is the policy at the start of the round: the same model with the adapter disabled,
so no second copy of the weights. Reference log-probs are constant, so they are computed once
before the first step; each step then needs only the policy forward (chosen and rejected rows
concatenated into one batch) and its backward.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from lm.logprobs import collate, sequence_logps
from training.dpo_loss import dpo_loss


class DPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(default=0.1, gt=0)
    learning_rate: float = Field(default=5e-4, gt=0)
    batch_size: int = Field(default=4, gt=0, description="pairs per optimizer step")
    epochs: int = Field(default=2, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    lora_r: int = Field(default=8, gt=0)
    lora_alpha: int = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)


class PreferencePair(BaseModel):
    """One training example, already tokenised with the policy's chat template."""

    pair_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]    # completion tokens, including the end-of-turn token if sampled
    rejected_ids: list[int]


class StepMetrics(BaseModel):
    step: int
    loss: float
    reward_chosen: float
    reward_rejected: float
    reward_margin: float
    reward_accuracy: float
    grad_norm: float
    lr: float
    tokens_per_s: float


def add_lora(model: PreTrainedModel, params: DPOParams, seed: int = 0) -> PeftModel:
    """Wrap `model` with a fresh LoRA adapter on every linear layer but the output head.

    LoRA's B matrix starts at zero, so the wrapped model computes exactly the original function.
    """
    torch.manual_seed(seed)  # LoRA's A matrices are randomly initialised
    config = LoraConfig(
        r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _batches(pairs: Sequence[PreferencePair], size: int) -> list[list[PreferencePair]]:
    return [list(pairs[i:i + size]) for i in range(0, len(pairs), size)]


def pair_logps(model: torch.nn.Module, pairs: Sequence[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of chosen and rejected, from one concatenated forward. (B,), (B,)"""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    logps = sequence_logps(model, collate(prompts, completions, pad_id))  # (2B,)
    return logps[: len(pairs)], logps[len(pairs):]


@torch.no_grad()
def reference_logps(model: PeftModel, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs under the reference = the same model with its adapter disabled. (N,), (N,)"""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with model.disable_adapter():
        for batch in _batches(pairs, batch_size):
            c, r = pair_logps(model, batch, pad_id)
            chosen.append(c)
            rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def num_steps(n_pairs: int, params: DPOParams) -> int:
    steps = params.epochs * math.ceil(n_pairs / params.batch_size)
    return min(steps, params.max_steps) if params.max_steps else steps


def train_dpo(
    model: PeftModel,
    pairs: Sequence[PreferencePair],
    params: DPOParams,
    pad_id: int,
    seed: int = 0,
    on_step: Callable[[StepMetrics], None] = lambda m: None,
) -> list[StepMetrics]:
    """Train the adapter in place; metrics of each step are measured before its update."""
    ref_chosen, ref_rejected = reference_logps(model, pairs, pad_id, params.batch_size)   # (N,), (N,)
    index_of = {p.pair_id: i for i, p in enumerate(pairs)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    rng = random.Random(seed)  # pair order per epoch
    total = num_steps(len(pairs), params)

    model.train()
    metrics: list[StepMetrics] = []
    step = 0
    while step < total:
        order = list(pairs)
        rng.shuffle(order)
        for batch in _batches(order, params.batch_size):
            if step >= total:
                break
            started = time.perf_counter()
            rows = torch.tensor([index_of[p.pair_id] for p in batch])
            policy_chosen, policy_rejected = pair_logps(model, batch, pad_id)            # (b,), (b,)
            out = dpo_loss(policy_chosen, policy_rejected, ref_chosen[rows], ref_rejected[rows], params.beta)
            loss = out.losses.mean()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in batch)
            m = StepMetrics(
                step=step,
                loss=float(loss.detach()),
                reward_chosen=float(out.chosen_rewards.mean()),
                reward_rejected=float(out.rejected_rewards.mean()),
                reward_margin=float((out.chosen_rewards - out.rejected_rewards).mean()),
                reward_accuracy=float((out.chosen_rewards > out.rejected_rewards).float().mean()),
                grad_norm=float(grad_norm),
                lr=params.learning_rate,
                tokens_per_s=tokens / (time.perf_counter() - started),
            )
            metrics.append(m)
            on_step(m)
            step += 1
    model.eval()
    return metrics
