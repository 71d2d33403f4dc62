"""The reference log-probs of DPO: the policy at the start of the round.

With LoRA the reference is the same model with its adapter disabled, so no second copy of the
weights. Completions sampled by the round's policy already carry their summed log-prob under that
policy, which is the reference; a few pairs are recomputed to check that before relying on it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import torch
from peft import PeftModel
from pydantic import BaseModel

from lm.batching import chunks
from training.pairs import PreferencePair, pair_logps


class ReferenceChoice(BaseModel):
    source: Literal["sampling", "forward"]
    why: str
    checked_pairs: int = 0
    mean_token_gap: float | None = None


@torch.no_grad()
def reference_logps(model: PeftModel, pairs: Sequence[PreferencePair], pad_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs under the reference = the same model with its adapter disabled. (N,), (N,)"""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with model.disable_adapter():
        for batch in chunks(pairs, batch_size):
            c, r = pair_logps(model, batch, pad_id)
            chosen.append(c)
            rejected.append(r)
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def choose_reference(model: PeftModel, pairs: Sequence[PreferencePair], mode: Literal["auto", "forward"], check_pairs: int,
                     tolerance: float, batch_size: int, pad_id: int, seed: int
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], ReferenceChoice]:
    """The reference log-probs (N,), (N,): from sampling when that is safe, else from a forward pass.

    `auto` recomputes `check_pairs` random pairs (adapter disabled); if they differ from the recorded
    log-probs by more than `tolerance` per token (different prompt template, dtype, a changed
    policy...), every pair is recomputed instead. `forward` always recomputes.
    """
    def forward(why: str, **checked) -> tuple[tuple[torch.Tensor, torch.Tensor], ReferenceChoice]:
        return reference_logps(model, pairs, pad_id, batch_size), ReferenceChoice(source="forward", why=why, **checked)

    if mode == "forward":
        return forward("reference: forward")
    if any(p.chosen_sampled_logp is None or p.rejected_sampled_logp is None for p in pairs):
        return forward("some pairs have no recorded sampling log-probs")
    check = random.Random(seed).sample(list(pairs), min(check_pairs, len(pairs)))
    chosen, rejected = reference_logps(model, check, pad_id, batch_size)                      # (k,), (k,)
    recorded_chosen, recorded_rejected = _recorded(check)                                     # (k,), (k,)
    gap = float(torch.cat([(chosen.cpu().double() - recorded_chosen).abs() / _lengths(check, "chosen_ids"),
                           (rejected.cpu().double() - recorded_rejected).abs() / _lengths(check, "rejected_ids")]).mean())
    if gap > tolerance:
        return forward(f"recorded log-probs differ by {gap:.2e}/token (> {tolerance:g})", checked_pairs=len(check), mean_token_gap=gap)
    recorded_chosen, recorded_rejected = _recorded(pairs)
    choice = ReferenceChoice(source="sampling", why=f"recorded log-probs agree to {gap:.2e}/token", checked_pairs=len(check),
                             mean_token_gap=gap)
    return (recorded_chosen.float(), recorded_rejected.float()), choice


def _recorded(pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probs recorded at sampling, chosen and rejected, float64. (N,), (N,)"""
    return (torch.tensor([p.chosen_sampled_logp for p in pairs], dtype=torch.float64),
            torch.tensor([p.rejected_sampled_logp for p in pairs], dtype=torch.float64))


def _lengths(pairs: Sequence[PreferencePair], side: Literal["chosen_ids", "rejected_ids"]) -> torch.Tensor:
    return torch.tensor([len(getattr(p, side)) for p in pairs], dtype=torch.float64)  # (N,)
