"""Direct Preference Optimization loss (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

DPO fits the policy so that its implicit reward r(x, y) = beta * (log pi(y|x) - log ref(y|x))
ranks the chosen completion above the rejected one under a Bradley-Terry model:

    loss = -log sigmoid(beta * ((logp_pi(c) - logp_ref(c)) - (logp_pi(r) - logp_ref(r))))

The loss takes log-prob tensors, not models: it does not care whether the reference log-probs were
recomputed by a forward pass or recorded when the completions were sampled. At initialisation the
policy equals the reference, both log-ratios are 0 and the loss is log 2 = 0.6931 whatever the data.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class DPOLossOutput(NamedTuple):
    losses: torch.Tensor            # (B,) per-pair loss
    chosen_rewards: torch.Tensor    # (B,) beta * (logp_pi(c) - logp_ref(c)), detached
    rejected_rewards: torch.Tensor  # (B,) beta * (logp_pi(r) - logp_ref(r)), detached


def dpo_loss(
    policy_chosen_logps: torch.Tensor,     # (B,) summed log-probs of chosen completion tokens under the policy
    policy_rejected_logps: torch.Tensor,   # (B,)
    reference_chosen_logps: torch.Tensor,  # (B,) the same under the frozen reference
    reference_rejected_logps: torch.Tensor,  # (B,)
    beta: float = 0.1,
) -> DPOLossOutput:
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return DPOLossOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())
