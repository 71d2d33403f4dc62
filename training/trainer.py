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

from lm.logprobs import collate, sequence_logps
from training.dpo_loss import LossType, dpo_loss


class DPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss_type: LossType = "sigmoid"
    beta: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5,
                                   description="sigmoid: conservative DPO; robust: the assumed share of flipped labels")
    learning_rate: float = Field(default=5e-4, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="share of steps with a linear warm-up")
    batch_size: int = Field(default=4, gt=0, description="pairs per optimizer step, over all processes")
    micro_batch_size: int | None = Field(default=None, gt=0, description="pairs per forward (gradient accumulation); empty = the whole step")
    epochs: int = Field(default=2, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    shuffle: bool = True
    group_by_length: bool = Field(default=True, description="batch pairs of similar length: less padding")
    lora_r: int = Field(default=8, gt=0)
    lora_alpha: int = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    bf16: bool = Field(default=False, description="GPU: bfloat16 autocast through accelerate")
    gradient_checkpointing: bool = False
    pair_weighting: Literal["none", "confidence"] = Field(
        default="none", description="confidence: weight each pair's loss by its verdict's confidence (mean weight 1)")
    reference: Literal["auto", "forward"] = Field(
        default="auto", description="auto: reuse the log-probs recorded at sampling when a forward check agrees")
    reference_check_pairs: int = Field(default=4, ge=1, description="pairs recomputed to check recorded log-probs")
    reference_tolerance: float = Field(default=1e-3, gt=0, description="mean |recorded - recomputed| per token")
    collapse_reward: float = Field(default=5.0, gt=0, description="stop when both mean rewards fall below minus this")
    checkpoint_every: int = Field(default=0, ge=0, description="save a resumable checkpoint every N steps (0: never)")


class PreferencePair(BaseModel):
    """One training example, already tokenised with the policy's chat template."""

    pair_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]    # completion tokens, including the end-of-turn token if sampled
    rejected_ids: list[int]
    # summed log-probs recorded when the round's policy sampled these completions (= the reference)
    chosen_sampled_logp: float | None = None
    rejected_sampled_logp: float | None = None
    # how strongly the judge prefers chosen (verdict confidence: the smaller |score| of the two orders;
    # 1 for a human label); used by pair_weighting = confidence
    confidence: float = Field(default=1.0, ge=0)


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


def pair_logps(model: torch.nn.Module, pairs: Sequence[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of chosen and rejected, from one concatenated forward. (B,), (B,)"""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    logps = sequence_logps(model, collate(prompts, completions, pad_id))  # (2B,)
    return logps[: len(pairs)], logps[len(pairs):]


def _chunks(items: Sequence, size: int) -> list[list]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@torch.no_grad()
def reference_logps(model: PeftModel, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs under the reference = the same model with its adapter disabled. (N,), (N,)"""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with model.disable_adapter():
        for batch in _chunks(pairs, batch_size):
            c, r = pair_logps(model, batch, pad_id)
            chosen.append(c)
            rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


class ReferenceChoice(BaseModel):
    source: Literal["sampling", "forward"]
    why: str
    checked_pairs: int = 0
    mean_token_gap: float | None = None


def choose_reference(model: PeftModel, pairs: Sequence[PreferencePair], params: DPOParams, pad_id: int,
                     seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ReferenceChoice]:
    """The reference log-probs, from sampling when that is safe, else from a forward pass.

    Completions sampled by the round's policy carry their summed log-prob under that policy, which
    is the reference. Before relying on it, a few pairs are recomputed (adapter disabled); if they
    differ by more than the tolerance per token (different prompt template, dtype, a changed
    policy...), every pair is recomputed instead.
    """
    if params.reference == "forward":
        return reference_logps(model, pairs, pad_id, params.batch_size), ReferenceChoice(source="forward", why="reference: forward")
    if any(p.chosen_sampled_logp is None or p.rejected_sampled_logp is None for p in pairs):
        return (reference_logps(model, pairs, pad_id, params.batch_size),
                ReferenceChoice(source="forward", why="some pairs have no recorded sampling log-probs"))
    check = random.Random(seed).sample(list(pairs), min(params.reference_check_pairs, len(pairs)))
    chosen, rejected = reference_logps(model, check, pad_id, params.batch_size)
    gaps = [abs(float(c) - p.chosen_sampled_logp) / len(p.chosen_ids) for c, p in zip(chosen, check)]
    gaps += [abs(float(r) - p.rejected_sampled_logp) / len(p.rejected_ids) for r, p in zip(rejected, check)]
    gap = sum(gaps) / len(gaps)
    if gap > params.reference_tolerance:
        return (reference_logps(model, pairs, pad_id, params.batch_size),
                ReferenceChoice(source="forward", why=f"recorded log-probs differ by {gap:.2e}/token (> {params.reference_tolerance:g})",
                                checked_pairs=len(check), mean_token_gap=gap))
    recorded = (torch.tensor([p.chosen_sampled_logp for p in pairs]), torch.tensor([p.rejected_sampled_logp for p in pairs]))
    return recorded, ReferenceChoice(source="sampling", why=f"recorded log-probs agree to {gap:.2e}/token",
                                     checked_pairs=len(check), mean_token_gap=gap)


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
            order = [i for w in _chunks(order, window) for i in sorted(w, key=lambda i: length[i])]
        batches = _chunks(order, params.batch_size)
        if params.group_by_length and params.shuffle:
            rng.shuffle(batches)
        steps += batches
    return steps[: num_steps(len(pairs), params)]


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
        (ref_chosen, ref_rejected), reference = choose_reference(accelerator.unwrap_model(model), pairs, params, pad_id, seed)
    ref_chosen, ref_rejected = ref_chosen.to(device), ref_rejected.to(device)                          # (N,), (N,)
    ipo = params.loss_type == "ipo"
    chosen_len = torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.float32, device=device)     # (N,)
    rejected_len = torch.tensor([len(p.rejected_ids) for p in pairs], dtype=torch.float32, device=device)  # (N,)
    weights = pair_weights(pairs, params.pair_weighting).to(device)                                     # (N,)
    first_step = _load_checkpoint(checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler)

    model.train()
    result = TrainResult(metrics=[], reference=reference, resumed_from_step=first_step)
    for step in range(first_step, len(steps)):
        started = time.perf_counter()
        batch = steps[step]
        mine = batch[rank::world]                      # this process's share of the step
        largest_share = math.ceil(len(batch) / world)
        micro_size = params.micro_batch_size or largest_share
        micro = _chunks(mine, micro_size)
        # DDP's collectives need the same forwards and backwards on every process: a process whose
        # share is short (an epoch's last step) runs fillers, one of the step's pairs with zero weight.
        real = len(micro)
        micro += [batch[:1]] * (math.ceil(largest_share / micro_size) - real)
        sums = torch.zeros(6)  # loss, reward chosen, reward rejected, correct, pairs, tokens (this process)
        for k, rows in enumerate(micro):
            last, filler = k == len(micro) - 1, k >= real
            with accelerator.no_sync(model) if not last and world > 1 else nullcontext():  # sync grads once per step
                with accelerator.autocast():
                    policy_chosen, policy_rejected = pair_logps(model, [pairs[i] for i in rows], pad_id)  # (b,), (b,)
                idx = torch.tensor(rows, device=device)
                pc, pr, rc, rr = policy_chosen, policy_rejected, ref_chosen[idx], ref_rejected[idx]
                if ipo:  # IPO compares token-averaged log-probs
                    pc, rc = pc / chosen_len[idx], rc / chosen_len[idx]
                    pr, rr = pr / rejected_len[idx], rr / rejected_len[idx]
                losses = dpo_loss(pc, pr, rc, rr, params.beta, params.loss_type, params.label_smoothing).losses
                scale = 0.0 if filler else world / len(batch)   # DDP averages: mean over the step
                accelerator.backward((losses * weights[idx]).sum() * scale)
            if filler:
                continue
            # Rewards are logged from summed log-ratios for every loss type (as TRL does), so runs compare.
            chosen_rewards = params.beta * (policy_chosen.detach() - ref_chosen[idx])      # (b,)
            rejected_rewards = params.beta * (policy_rejected.detach() - ref_rejected[idx])  # (b,)
            sums += torch.tensor([float(losses.detach().sum()), float(chosen_rewards.sum()), float(rejected_rewards.sum()),
                                  float((chosen_rewards > rejected_rewards).sum()), len(rows),
                                  sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in rows)])
        grad_norm = accelerator.clip_grad_norm_(trainable, params.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        total = accelerator.reduce(sums.to(device), reduction="sum").cpu()
        n = float(total[4])
        m = StepMetrics(step=step, loss=float(total[0]) / n, reward_chosen=float(total[1]) / n,
                        reward_rejected=float(total[2]) / n, reward_margin=float(total[1] - total[2]) / n,
                        reward_accuracy=float(total[3]) / n, grad_norm=float(grad_norm), lr=lr,
                        tokens_per_s=float(total[5]) / (time.perf_counter() - started))
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
