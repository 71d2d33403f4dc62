"""DPO on a LoRA adapter: setup, reference log-probs, then one explicit training loop.

The reference is the policy at the start of the round: the same model with the adapter disabled,
so no second copy of the weights. Reference log-probs are constant: they are taken from sampling
when a forward check confirms them (no reference forward at all), else computed once before the
first step. Each step then needs only the policy forward (chosen and rejected rows concatenated
into one batch) and its backward. The same loop runs on one CPU and under `accelerate launch`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel

from lm.batching import chunks
from store.rows import StepMetrics
from training.dpo_loss import LossType, dpo_loss
from training.pairs import PreferencePair, pair_logps
from training.reference import ReferenceChoice, choose_reference


class DPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss_type: LossType = Field(default="sigmoid", description="sigmoid (DPO), robust, ipo or hinge (training/dpo_loss.py)")
    beta: float = Field(default=0.1, gt=0, description="how far the policy may move from the reference")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5,
                                   description="sigmoid: conservative DPO; robust: the assumed share of flipped labels")
    learning_rate: float = Field(default=5e-4, gt=0, description="of the LoRA weights")
    lr_schedule: Literal["cosine", "constant"] = Field(default="cosine", description="after the warm-up")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="share of steps with a linear warm-up")
    batch_size: int = Field(default=4, gt=0, description="pairs per optimizer step, over all processes")
    micro_batch_size: int | None = Field(default=None, gt=0, description="pairs per forward (gradient accumulation); empty = the whole step")
    epochs: int = Field(default=2, gt=0, description="passes over the round's pairs")
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many steps (empty: the epochs decide)")
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient clipping")
    shuffle: bool = Field(default=True, description="shuffle the pairs every epoch")
    group_by_length: bool = Field(default=True, description="batch pairs of similar length: less padding")
    lora_r: int = Field(default=8, gt=0, description="LoRA rank (on every linear layer)")
    lora_alpha: int = Field(default=16, gt=0, description="LoRA scale numerator")
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="LoRA dropout")
    bf16: bool = Field(default=False, description="GPU: bfloat16 autocast through accelerate")
    gradient_checkpointing: bool = Field(default=False, description="less memory, more compute")
    pair_weighting: Literal["none", "confidence"] = Field(
        default="none", description="confidence: weight each pair's loss by its verdict's confidence (mean weight 1)")
    reference: Literal["auto", "forward"] = Field(
        default="auto", description="auto: reuse the log-probs recorded at sampling when a forward check agrees")
    reference_check_pairs: int = Field(default=4, ge=1, description="pairs recomputed to check recorded log-probs")
    reference_tolerance: float = Field(default=1e-3, gt=0, description="mean |recorded - recomputed| per token")
    collapse_reward: float = Field(default=5.0, gt=0, description="stop when both mean rewards fall below minus this")
    checkpoint_every: int = Field(default=0, ge=0, description="save a resumable checkpoint every N steps (0: never)")


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


def pair_weights(pairs: Sequence[PreferencePair], weighting: str) -> torch.Tensor:
    """Per-pair loss weights (N,), mean 1 so the learning rate means the same with or without them.

    With confidence weighting a pair the judge barely prefers (both orders just past the tie margin)
    pulls the policy less than one every principle agrees on: a noisy judge's near-ties are where
    its flips live.
    """
    if weighting == "none":
        return torch.ones(len(pairs))
    confidence = torch.tensor([p.confidence for p in pairs], dtype=torch.float32)  # (N,)
    if float(confidence.sum()) == 0.0:
        return torch.ones(len(pairs))
    return confidence * len(pairs) / confidence.sum()


def num_steps(n_pairs: int, params: DPOParams) -> int:
    steps = params.epochs * math.ceil(n_pairs / params.batch_size)
    return min(steps, params.max_steps) if params.max_steps else steps


def plan_steps(pairs: Sequence[PreferencePair], params: DPOParams, seed: int) -> list[list[int]]:
    """Pair indices of every optimizer step, fixed up front (so a resumed run takes the same steps).

    With group_by_length, each epoch's order is cut into windows of 8 steps and sorted by length
    inside a window, so a batch holds pairs of similar length (less padding); the batches are then
    shuffled again so that lengths do not drift through the epoch.
    """
    rng = random.Random(seed)
    length = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    steps: list[list[int]] = []
    while len(steps) < num_steps(len(pairs), params):
        order = list(range(len(pairs)))
        if params.shuffle:
            rng.shuffle(order)
        if params.group_by_length:
            window = 8 * params.batch_size
            order = [i for w in chunks(order, window) for i in sorted(w, key=lambda i: length[i])]
        batches = chunks(order, params.batch_size)
        if params.group_by_length and params.shuffle:
            rng.shuffle(batches)
        steps += batches
    return steps[: num_steps(len(pairs), params)]


def micro_batches(batch: Sequence[int], rank: int, world: int, micro_size: int | None) -> list[tuple[list[int], bool]]:
    """This process's share of one optimizer step, as (pair indices, is_filler) micro-batches.

    Rank r takes every world-th pair of the step. DDP's collectives need the same number of forwards
    and backwards on every process, so a process whose share is short (an epoch's last step) runs
    fillers: one of the step's pairs, to be weighted zero.
    """
    largest_share = math.ceil(len(batch) / world)
    size = micro_size or largest_share
    mine = chunks(list(batch[rank::world]), size)
    fillers = math.ceil(largest_share / size) - len(mine)
    return [(rows, False) for rows in mine] + [(list(batch[:1]), True)] * fillers


class StepTotals:
    """Sums over one step's pairs on this process, reduced over processes into the step's metrics."""

    FIELDS = ("loss", "reward_chosen", "reward_rejected", "correct", "pairs", "tokens")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.FIELDS, 0.0)

    def add(self, losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, tokens: int) -> None:
        self.sums["loss"] += float(losses.detach().sum())
        self.sums["reward_chosen"] += float(chosen_rewards.sum())
        self.sums["reward_rejected"] += float(rejected_rewards.sum())
        self.sums["correct"] += float((chosen_rewards > rejected_rewards).sum())
        self.sums["pairs"] += len(losses)
        self.sums["tokens"] += tokens

    def metrics(self, accelerator, step: int, grad_norm: float, lr: float, seconds: float) -> StepMetrics:
        """Summed over every process, then per pair."""
        local = torch.tensor([self.sums[f] for f in self.FIELDS], device=accelerator.device)
        total = dict(zip(self.FIELDS, accelerator.reduce(local, reduction="sum").cpu().tolist()))
        n = total["pairs"]
        return StepMetrics(step=step, loss=total["loss"] / n, reward_chosen=total["reward_chosen"] / n,
                           reward_rejected=total["reward_rejected"] / n,
                           reward_margin=(total["reward_chosen"] - total["reward_rejected"]) / n,
                           reward_accuracy=total["correct"] / n, grad_norm=grad_norm, lr=lr,
                           tokens_per_s=total["tokens"] / seconds)


class TrainResult(BaseModel):
    metrics: list[StepMetrics]
    reference: ReferenceChoice
    collapsed: bool = False
    resumed_from_step: int = 0


def train_dpo(
    model: PeftModel,
    pairs: Sequence[PreferencePair],
    params: DPOParams,
    pad_id: int,
    seed: int = 0,
    on_step: Callable[[StepMetrics], None] = lambda m: None,
    checkpoint_dir: Path | None = None,
) -> TrainResult:
    """Train the adapter in place; metrics of each step are measured before its update.

    Runs where `model` is: on one CPU (fp32), on a GPU (bf16 autocast if `params.bf16`), and under
    `accelerate launch` on several processes or GPUs: each step's
    pairs are split over the processes (rank r takes every world-th pair), each process scales its
    loss so that DDP's gradient average equals the gradient of the mean loss over the whole step,
    and logged metrics are reduced over processes.
    """
    from accelerate import Accelerator
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    on_cpu = next(model.parameters()).device.type == "cpu"  # train where the model was loaded
    accelerator = Accelerator(cpu=on_cpu, mixed_precision="bf16" if params.bf16 and not on_cpu else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    steps = plan_steps(pairs, params, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    warmup = int(params.warmup_ratio * len(steps))
    scheduler = (get_cosine_schedule_with_warmup(optimizer, warmup, len(steps)) if params.lr_schedule == "cosine"
                 else get_constant_schedule_with_warmup(optimizer, warmup))
    model, optimizer = accelerator.prepare(model, optimizer)  # the model is on accelerator.device from here
    device = accelerator.device

    # Every tensor the loss meets lives on `device`. The reference is computed there too, under the
    # policy forwards' autocast, so that policy = reference at step 0 also holds in bf16 (loss log 2).
    with accelerator.autocast():
        (ref_chosen, ref_rejected), reference = choose_reference(
            accelerator.unwrap_model(model), pairs, params.reference, params.reference_check_pairs, params.reference_tolerance,
            params.batch_size, pad_id, seed)
    ref_chosen, ref_rejected = ref_chosen.to(device), ref_rejected.to(device)                          # (N,), (N,)
    chosen_len = torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.float32, device=device)     # (N,)
    rejected_len = torch.tensor([len(p.rejected_ids) for p in pairs], dtype=torch.float32, device=device)  # (N,)
    weights = pair_weights(pairs, params.pair_weighting).to(device)                                     # (N,)
    first_step = _load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler)

    model.train()
    result = TrainResult(metrics=[], reference=reference, resumed_from_step=first_step)
    for step in range(first_step, len(steps)):
        started = time.perf_counter()
        batch = steps[step]
        micro = micro_batches(batch, rank, world, params.micro_batch_size)
        totals = StepTotals()
        for k, (rows, filler) in enumerate(micro):
            last = k == len(micro) - 1
            with accelerator.no_sync(model) if not last and world > 1 else nullcontext():  # sync grads once per step
                with accelerator.autocast():
                    policy_chosen, policy_rejected = pair_logps(model, [pairs[i] for i in rows], pad_id)  # (b,), (b,)
                idx = torch.tensor(rows, device=device)
                out = dpo_loss(policy_chosen, policy_rejected, ref_chosen[idx], ref_rejected[idx], params.beta,
                               params.loss_type, params.label_smoothing, chosen_len[idx], rejected_len[idx])
                scale = 0.0 if filler else world / len(batch)   # DDP averages: mean over the step
                accelerator.backward((out.losses * weights[idx]).sum() * scale)
            if not filler:
                totals.add(out.losses, out.chosen_rewards, out.rejected_rewards,
                           sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in rows))
        grad_norm = accelerator.clip_grad_norm_(trainable, params.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        m = totals.metrics(accelerator, step, float(grad_norm), lr, time.perf_counter() - started)
        result.metrics.append(m)
        on_step(m)
        if checkpoint_dir is not None and params.checkpoint_every and (step + 1) % params.checkpoint_every == 0:
            if accelerator.is_main_process:
                _save_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, step + 1)
            accelerator.wait_for_everyone()
        if m.reward_chosen < -params.collapse_reward and m.reward_rejected < -params.collapse_reward:
            result.collapsed = True  # both log-ratios falling: the policy is moving away from everything
            break
    model = accelerator.unwrap_model(model)
    model.eval()
    return result


def _save_checkpoint(directory: Path, model: PeftModel, optimizer, scheduler, next_step: int) -> None:
    """Adapter weights + optimizer + schedule at a step boundary, written aside and renamed."""
    from peft import get_peft_model_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "checkpoint.pt.partial"
    torch.save({"next_step": next_step, "adapter": get_peft_model_state_dict(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, partial)
    partial.rename(directory / "checkpoint.pt")


def _load_checkpoint(directory: Path | None, model: PeftModel, optimizer, scheduler) -> int:
    """The step to start from: 0, or where the last checkpoint left off (its state restored)."""
    if directory is None or not (directory / "checkpoint.pt").is_file():
        return 0
    from peft import set_peft_model_state_dict

    state = torch.load(directory / "checkpoint.pt", weights_only=False)
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["next_step"]
