"""A preference pair as the trainer sees it (token ids, recorded log-probs, confidence), and the
policy's summed log-probs of a batch of pairs from one forward."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, Field

from lm.logprobs import collate, sequence_logps


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


def pair_logps(model: torch.nn.Module, pairs: Sequence[PreferencePair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of chosen and rejected, from one concatenated forward. (B,), (B,)"""
    prompts = [p.prompt_ids for p in pairs] * 2
    completions = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    logps = sequence_logps(model, collate(prompts, completions, pad_id))  # (2B,)
    return logps[: len(pairs)], logps[len(pairs):]
