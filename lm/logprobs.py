"""Summed log-probabilities of completion tokens given their prompts: the quantity DPO compares.

Layout of a batch (prompts left-padded so every completion starts at the same column P):

    [pad pad p0 p1 ... p_{P-1} | c0 c1 ... c_k pad pad]
              prompt (masked)     completion (counted, incl. the end-of-turn token if sampled)

so the model only has to produce logits for the last C+1 positions (`logits_to_keep`), and the
vocabulary projection - the largest tensor here - skips the prompt entirely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lm.batching import pad_rows


@dataclass
class CompletionBatch:
    input_ids: torch.Tensor        # (B, P + C) long
    attention_mask: torch.Tensor   # (B, P + C) long, 0 on padding
    position_ids: torch.Tensor     # (B, P + C) long, counting from each row's first real token
    completion_ids: torch.Tensor   # (B, C) long, the completion tokens (pad where masked)
    completion_mask: torch.Tensor  # (B, C) float, 1 exactly on completion tokens

    def to(self, device: torch.device) -> CompletionBatch:
        return CompletionBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                                        self.completion_ids, self.completion_mask)))


def collate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> CompletionBatch:
    assert len(prompts) == len(completions) and prompts, "one completion per prompt"
    prompt_ids, prompt_mask = pad_rows(prompts, pad_id, "left")                                      # (B, P)
    completion_ids, completion_mask = pad_rows(completions, pad_id, "right", max(max(map(len, completions)), 1))  # (B, C)
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)                                        # (B, P + C)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return CompletionBatch(input_ids, attention_mask, position_ids, completion_ids, completion_mask.float())


def sequence_logps(model: torch.nn.Module, batch: CompletionBatch) -> torch.Tensor:
    """Sum over completion tokens of log p(token | everything before it). Returns (B,) float32, on
    the model's device (the batch is moved there)."""
    batch = batch.to(next(model.parameters()).device)
    C = batch.completion_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=C + 1,
        use_cache=False,
    )
    # The kept logits cover positions P-1 .. P+C-1; position P-1+j predicts completion token j.
    logits = out.logits[:, :C].float()                                   # (B, C, V)
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, batch.completion_ids.unsqueeze(-1)).squeeze(-1)  # (B, C)
    return (token_logps * batch.completion_mask).sum(-1)                  # (B,)
