"""The sampler contract and the transformers backend (the CPU default).

A request is a chat (system + user message); a sampler returns `n` completions per request with
their token ids, finish reason and the summed log-probability of the sampled tokens under the
*untempered* policy - the same quantity DPO needs as the reference log-prob.

Every backend samples the same plan: `plan_batches` cuts the (request, sample index) rows into
batches, each with a seed derived from the round's seed. A backend only implements
`sample_batch`; `sample` walks the plan. The stored seed of a completion is its batch's seed:
transformers draws the whole batch from one generator seeded with it; vLLM gets one request per
prompt with all of its samples in the batch (n = k) and the seed `sequence_seed(batch seed, prompt
key, first sample index)`, and seeds sample j of that request with seed + j.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from peft import PeftModel
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lm.batching import pad_rows
from lm.loading import decode_text, encode_chat
from store.ids import stable_int


class SamplingParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = Field(default=2, gt=0)
    max_new_tokens: int = Field(default=96, gt=0, description="length of a sampled reply, in tokens")
    temperature: float = Field(default=0.8, ge=0, description="0 = greedy")
    top_p: float = Field(default=0.95, gt=0, le=1, description="nucleus sampling")
    batch_size: int = Field(default=16, gt=0, description="rows per generate call (and per vLLM request batch)")


class SampleRequest(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: str  # the caller's id for this prompt
    system: str
    user: str


class SampledCompletion(BaseModel):
    key: str
    sample_index: int
    seed: int
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # stop | length
    sum_logprob: float


class SampleBatch(BaseModel):
    """One generate() call: rows are (request index, sample index); one seed for the whole batch."""

    seed: int
    rows: list[tuple[int, int]]


def plan_batches(n_requests: int, params: SamplingParams, seed: int, first_sample: int = 0) -> list[SampleBatch]:
    """Deterministic batches of sample indices first_sample .. first_sample + n - 1 of every request:
    the same requests, params, seed and first sample always give the same plan.

    Batched sampling draws from one generator per batch, so a completion's text depends on its
    batch's seed and composition; both are fixed here, which makes every row reproducible. A
    request's samples are consecutive rows, so a batch asks for a prompt's samples together.
    """
    rows = [(r, s) for r in range(n_requests) for s in range(first_sample, first_sample + params.n)]
    batch_seeds = ("batch", seed) if first_sample == 0 else ("batch", seed, first_sample)  # later draws: fresh seeds
    return [
        SampleBatch(seed=stable_int(*batch_seeds, i), rows=rows[start:start + params.batch_size])
        for i, start in enumerate(range(0, len(rows), params.batch_size))
    ]


def sequence_seed(batch_seed: int, key: str, sample_index: int) -> int:
    """The seed of one request for backends that seed per request (vLLM): fixed by the plan."""
    return stable_int("sequence", batch_seed, key, sample_index) % 2**31


class PromptRequest(BaseModel):
    """One request of a batch to a backend that takes n samples per request (vLLM): the batch's
    consecutive rows of one prompt. vLLM seeds sample j of a request with `seed + j`."""

    request: int  # index into the requests
    first_sample: int
    n: int
    seed: int


def prompt_requests(requests: Sequence[SampleRequest], batch: SampleBatch) -> list[PromptRequest]:
    """The batch's rows grouped into one request per prompt, all of its samples in the batch at once (n = k)."""
    grouped: list[PromptRequest] = []
    for r, s in batch.rows:
        last = grouped[-1] if grouped else None
        if last is not None and last.request == r and last.first_sample + last.n == s:
            grouped[-1] = last.model_copy(update={"n": last.n + 1})
        else:
            grouped.append(PromptRequest(request=r, first_sample=s, n=1, seed=sequence_seed(batch.seed, requests[r].key, s)))
    return grouped


class Sampler(Protocol):
    backend: str  # recorded with the round: "transformers" | "vllm-engine" | "vllm-server"

    def sample_batch(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                     params: SamplingParams) -> list[SampledCompletion]: ...


class TransformersSampler:
    """The CPU default: batched `generate` with left padding on an in-memory model (adapters merged or live)."""

    backend = "transformers"

    def __init__(self, model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase):
        self.model, self.tokenizer = model, tokenizer

    def sample_batch(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                     params: SamplingParams) -> list[SampledCompletion]:
        return generate_batch(self.model, self.tokenizer, requests, batch, params)


@torch.no_grad()
def generate_batch(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[SampleRequest],
    batch: SampleBatch,
    params: SamplingParams,
) -> list[SampledCompletion]:
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    prompts = [encode_chat(tokenizer, requests[r].system, requests[r].user) for r, _ in batch.rows]
    input_ids, attention_mask = pad_rows(prompts, pad_id, "left")  # (B, P): every prompt ends at column P
    P = input_ids.shape[1]

    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    torch.manual_seed(batch.seed)  # seeds the CUDA generators too
    greedy = params.temperature == 0
    decoding = {"do_sample": False} if greedy else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
    out = model.generate(  # type: ignore[operator]  # GenerationMixin.generate, typed through nn.Module.__getattr__
        input_ids=input_ids,
        attention_mask=attention_mask,
        **decoding,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=True,  # raw logits, before temperature/top-p: the policy's own distribution
    )
    new_tokens = out.sequences[:, P:]                                        # (B, T)
    raw_logits = torch.stack(out.logits, dim=1).float()                      # (B, T, V)
    token_logps = torch.gather(F.log_softmax(raw_logits, -1), 2, new_tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)

    results = []
    for i, (r, s) in enumerate(batch.rows):
        tokens = new_tokens[i].tolist()
        if eos_id in tokens:
            length, finish = tokens.index(eos_id) + 1, "stop"  # keep the end-of-turn token: DPO scores it too
        else:
            length, finish = len(tokens), "length"
        kept = tokens[:length]
        results.append(
            SampledCompletion(
                key=requests[r].key,
                sample_index=s,
                seed=batch.seed,
                text=decode_text(tokenizer, kept),
                token_ids=kept,
                prompt_tokens=len(prompts[i]),
                finish_reason=finish,
                sum_logprob=float(token_logps[i, :length].sum()),
            )
        )
    return results


def sample(
    sampler: Sampler,
    requests: Sequence[SampleRequest],
    params: SamplingParams,
    seed: int,
    skip_batch: Callable[[SampleBatch], bool] = lambda batch: False,
    on_batch: Callable[[list[SampledCompletion]], None] = lambda done: None,
    first_sample: int = 0,
) -> list[SampledCompletion]:
    """Sample `params.n` completions for every request, batch by batch.

    `skip_batch` lets the caller skip batches it already has (a resumed round); `on_batch` receives
    each finished batch (to store it at once and advance a progress bar).
    """
    results: list[SampledCompletion] = []
    for batch in plan_batches(len(requests), params, seed, first_sample):
        if skip_batch(batch):
            continue
        done = sampler.sample_batch(requests, batch, params)
        on_batch(done)
        results.extend(done)
    return results
