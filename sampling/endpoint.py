"""Completions from any OpenAI-compatible chat endpoint (a production model, another team's model, a
hosted API): a Sampler, so a collection samples from it exactly as it samples from the policy.

One chat request per prompt asks for all of its samples in the batch at once (`n`); a server that
returns fewer choices than asked (some ignore `n`) is asked again for the rest, one by one. Retries
(429, 5xx, timeouts, connection errors, with backoff) are the openai client's; `max_requests` caps
what one run may send. The endpoint returns text, not our token ids or log-probs: a reply's token
ids are the policy tokenizer's encoding of its text (so lengths read alike across sources), and its
log-prob is unknown (recorded as 0.0; the backend `openai` in its sampling settings says why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import openai
from transformers import PreTrainedTokenizerBase

from lm.endpoint import EndpointSettings
from sampling.sampler import PromptRequest, SampleBatch, SampledCompletion, SampleRequest, SamplingParams, prompt_requests


class EndpointBudgetSpent(RuntimeError):
    """The run sent `max_requests` requests; what was sampled before is stored, a rerun goes on."""


class EndpointSampler:
    backend = "openai"

    def __init__(self, settings: EndpointSettings, tokenizer: PreTrainedTokenizerBase):
        self.settings, self.tokenizer = settings, tokenizer
        self.requests_sent = 0

    def sample_batch(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                     params: SamplingParams) -> list[SampledCompletion]:
        return asyncio.run(self._sample_rows(requests, batch, params))

    async def _sample_rows(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                           params: SamplingParams) -> list[SampledCompletion]:
        client = openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=self.settings.api_key(),
                                    max_retries=self.settings.max_retries, timeout=self.settings.timeout_s)
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def ask(request: SampleRequest, n: int, seed: int) -> list[tuple[str, str, int]]:
            """(text, finish reason, prompt tokens) of up to n choices."""
            if self.settings.max_requests is not None and self.requests_sent >= self.settings.max_requests:
                raise EndpointBudgetSpent(f"collect.openai.max_requests ({self.settings.max_requests}) spent; "
                                          "what was sampled is stored and a rerun goes on from there")
            self.requests_sent += 1
            async with gate:
                reply = await client.chat.completions.create(
                    model=self.settings.model, n=n, seed=seed, max_tokens=params.max_new_tokens,
                    temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                    messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.user}])
            used = reply.usage.prompt_tokens if reply.usage else 0
            return [(c.message.content or "", "length" if c.finish_reason == "length" else "stop", used)
                    for c in sorted(reply.choices, key=lambda c: c.index)]

        async def one(group: PromptRequest) -> list[SampledCompletion]:
            request = requests[group.request]
            choices = await ask(request, group.n, group.seed)
            while len(choices) < group.n:  # the server ignored n: the missing samples one at a time
                choices += await ask(request, 1, group.seed + len(choices))
            return [SampledCompletion(key=request.key, sample_index=group.first_sample + j, seed=batch.seed, text=text,
                                      token_ids=self.tokenizer(text, add_special_tokens=False)["input_ids"],
                                      prompt_tokens=prompt_tokens, finish_reason=finish, sum_logprob=0.0)
                    for j, (text, finish, prompt_tokens) in enumerate(choices[:group.n])]

        try:
            done = await asyncio.gather(*(one(group) for group in prompt_requests(requests, batch)))
        finally:
            await client.close()
        return [completion for group in done for completion in group]
