"""Direct Preference Optimization losses (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

DPO fits the policy so that its implicit reward r(x, y) = beta * (log pi(y|x) - log ref(y|x))
ranks the chosen completion above the rejected one. With the margin

    h = (logp_pi(c) - logp_ref(c)) - (logp_pi(r) - logp_ref(r))

the variants are (as in TRL, so the two can be compared number for number):

    sigmoid  -log sigmoid(beta h)                   Bradley-Terry, the DPO paper; with label
             smoothing e (conservative DPO): -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)
    robust   (-(1-e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)
             robust DPO (Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409): an unbiased loss
             when a share e of the preference labels is flipped (a noisy judge); e = label_smoothing
    hinge    max(0, 1 - beta h)                      SLiC
    ipo      (h - 1 / (2 beta))^2                     IPO (Azar et al. 2023); h from log-probs
             averaged over completion tokens instead of summed, as in the paper and TRL (pass the
             completions' token counts; without them the log-probs are taken as they come)

The loss takes log-prob tensors, not models: it does not care whether the reference log-probs were
recomputed by a forward pass or recorded when the completions were sampled. At initialisation the
policy equals the reference, h = 0, and the sigmoid loss is log 2 = 0.6931 whatever the data.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F


class DPOLossOutput(NamedTuple):
    losses: torch.Tensor            # (B,) per-pair loss
    # the implicit rewards, from summed log-ratios for every loss type (as TRL logs them, so runs compare)
    chosen_rewards: torch.Tensor    # (B,) beta * (logp_pi(c) - logp_ref(c)), detached
    rejected_rewards: torch.Tensor  # (B,) beta * (logp_pi(r) - logp_ref(r)), detached


LossType = Literal["sigmoid", "robust", "ipo", "hinge"]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,     # (B,) log-probs of chosen completion tokens under the policy
    policy_rejected_logps: torch.Tensor,   # (B,)
    reference_chosen_logps: torch.Tensor,  # (B,) the same under the frozen reference
    reference_rejected_logps: torch.Tensor,  # (B,)
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,    # (B,) completion tokens of chosen: ipo averages by them
    rejected_lengths: torch.Tensor | None = None,  # (B,)
) -> DPOLossOutput:
    """Per-pair losses and the implicit rewards (see the module docstring)."""
    chosen_logratios = policy_chosen_logps - reference_chosen_logps      # (B,)
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    margin = chosen_logratios - rejected_logratios                      # (B,) h
    if loss_type == "ipo" and chosen_lengths is not None and rejected_lengths is not None:
        margin = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths  # token-averaged h
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * margin) * (1 - label_smoothing) - F.logsigmoid(-beta * margin) * label_smoothing
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * margin) * (1 - label_smoothing)
                  + F.logsigmoid(-beta * margin) * label_smoothing) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return DPOLossOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())
