"""A pairwise judge behind any OpenAI-compatible endpoint (OpenAI, `vllm serve`, llama.cpp, ...).

Formulation `pairwise_json` (default): one request per (pair, order); the constitution's
model-judged principles are rendered into a versioned template and the model answers with
per-principle votes and a rationale as JSON. `pointwise` / `pointwise_fewshot`: one yes/no request
per (reply, principle), scored from the answer token's logprobs (judges/pointwise.py).

- Structured output: a JSON schema (`response_format`) when the server takes one, else the strict
  JSON prompt alone; either way the reply is validated with pydantic. A reply that fails
  validation is retried once with the error shown to the model, then recorded as `invalid`.
- Transport faults (429, 5xx, timeouts, connection errors) are retried with exponential backoff
  and full jitter; when retries run out the judgment is recorded as `error`. Neither is ever
  counted as a preference.
- Requests run concurrently up to `concurrency`; a per-round budget of requests and dollars stops
  spending (the rest are recorded as `error: budget exhausted`).
- The API key is read from the environment variable the config names; it is never stored.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from constitution.loader import Constitution, Principle
from judges import pointwise
from judges.checks import check_votes
from judges.templates import JudgeTemplate, load_template
from judges.verdict import (
    Order,
    OrderJudgment,
    PairText,
    PrincipleVote,
    pair_score,
    scored_judgment,
    shown_texts,
    weighted_score,
    winner_of,
)
from lm.endpoint import EndpointSettings
from store.ids import stable_id, stable_int
from store.rows import ParseStatus

TEMPLATE_NAME = "pairwise_json_v2"
SlotVote = Literal["A", "B", "tie", "n/a"]
RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


class OpenAIJudgeSettings(EndpointSettings):
    """The endpoint (lm/endpoint.py), and how the judge asks it."""

    backoff_base_s: float = Field(default=0.5, gt=0, description="exponential backoff with full jitter: the first wait")
    backoff_max_s: float = Field(default=20.0, gt=0, description="... and the longest")
    max_cost_usd: float | None = Field(default=None, gt=0, description="per-round cost budget")
    usd_per_1k_prompt_tokens: float = Field(default=0.0, ge=0, description="price, for the cost budget")
    usd_per_1k_completion_tokens: float = Field(default=0.0, ge=0, description="price, for the cost budget")
    structured_output: Literal["auto", "json_schema", "json_prompt"] = Field(
        default="auto", description="auto: a JSON schema, and a strict JSON prompt for a request the server refuses it for")
    max_tokens: int = Field(default=400, gt=0, description="of a pairwise_json reply")
    temperature: float = Field(default=0.0, ge=0, description="of the judge's replies")
    principles_per_comparison: int | None = Field(
        default=None, gt=0, description="Constitutional-AI mode: judge a sampled subset of k principles per pair")
    vote_logprobs: bool = Field(
        default=False, description="ask for token logprobs and score each vote by p(A) - p(B) instead of +-1")

    @model_validator(mode="before")
    @classmethod
    def _moved_to_the_judge(cls, data):
        if isinstance(data, dict):
            for key in ("formulation", "tie_margin"):
                if key in data:
                    raise ValueError(f"judge.openai.{key} is now judge.{key} (one setting for every kind of judge)")
        return data


Reply = TypeVar("Reply", bound=BaseModel)
OpenAIFormulation = Literal["pairwise_json", "pointwise", "pointwise_fewshot"]


class PointwiseAnswer(NamedTuple):
    """One (message, reply, principle) yes/no request: its status, p(yes = the reply breaks it), text, usage."""

    status: ParseStatus
    p_yes: float | None
    text: str  # the answer, or why there is none
    usage: dict

    def breaks(self) -> float:
        assert self.p_yes is not None, "only an ok answer has a probability"
        return self.p_yes


class BudgetExhausted(Exception):
    pass


class _Spend:
    """Requests and dollars spent by one judge instance (one round)."""

    def __init__(self, settings: OpenAIJudgeSettings):
        self.settings, self.requests, self.cost_usd = settings, 0, 0.0

    def reserve(self) -> None:
        s = self.settings
        if s.max_requests is not None and self.requests >= s.max_requests:
            raise BudgetExhausted(f"request budget of {s.max_requests} exhausted")
        if s.max_cost_usd is not None and self.cost_usd >= s.max_cost_usd:
            raise BudgetExhausted(f"cost budget of ${s.max_cost_usd} exhausted")
        self.requests += 1

    def charge(self, prompt_tokens: int, completion_tokens: int) -> float:
        cost = (prompt_tokens * self.settings.usd_per_1k_prompt_tokens
                + completion_tokens * self.settings.usd_per_1k_completion_tokens) / 1000
        self.cost_usd += cost
        return cost


@functools.lru_cache(maxsize=256)
def response_format(principle_ids: tuple[str, ...]) -> dict:
    return {"type": "json_schema", "json_schema": {
        "name": "pairwise_verdict", "schema": reply_model(principle_ids).model_json_schema(), "strict": True}}


class JudgeReply(BaseModel):
    """A valid reply: a vote per asked principle (reply_model narrows `votes` to their ids) and a rationale."""

    model_config = ConfigDict(extra="forbid")
    votes: BaseModel
    rationale: str = Field(min_length=1)


@functools.lru_cache(maxsize=256)
def reply_model(principle_ids: tuple[str, ...]) -> type[JudgeReply]:
    """The pydantic model of a valid reply: exactly these principle ids, each voted A|B|tie|n/a."""
    fields: dict[str, Any] = {pid: (SlotVote, ...) for pid in principle_ids}
    votes = create_model("Votes", __config__=ConfigDict(extra="forbid"), **fields)
    return create_model("JudgeReply", __base__=JudgeReply, votes=(votes, ...))


def parse_reply(content: str | None, model: type[Reply]) -> Reply:
    """Validate the model's reply; a ```json fence around the object is tolerated, nothing else."""
    text = (content or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.DOTALL)
    return model.model_validate_json(fenced.group(1) if fenced else text)


class OpenAIJudge:
    def __init__(self, settings: OpenAIJudgeSettings, formulation: OpenAIFormulation = "pairwise_json",
                 tie_margin: float = 0.02, template: JudgeTemplate | None = None,
                 client_factory: Callable[[], openai.AsyncOpenAI] | None = None, taught: Sequence[pointwise.Taught] = ()):
        """`taught`: worked examples from people (pointwise_fewshot only); they are part of the judge's id."""
        self.settings, self.formulation, self.tie_margin = settings, formulation, tie_margin
        self.taught = list(taught) if formulation == "pointwise_fewshot" else []
        pointwise_judge = formulation != "pairwise_json"
        self.template = template or load_template(pointwise.TEMPLATE_NAME if pointwise_judge else TEMPLATE_NAME)
        identity = settings.model_dump(include={"base_url", "model", "temperature", "max_tokens",
                                                "principles_per_comparison", "vote_logprobs"})
        identity["tie_margin"] = tie_margin
        if pointwise_judge:  # (pairwise_json keeps the ids judgments were cached under before formulations)
            identity["formulation"] = formulation
            identity["template"] = self.template.version  # a new question is a new judge: qualified afresh
        self.judge_id = f"openai:{settings.model}:{stable_id(identity)[:6]}"
        if self.taught:
            self.judge_id += f"+taught:{stable_id([t.model_dump() for t in self.taught])[:6]}"
        self.prompt_version = self.template.version
        self.spend = _Spend(settings)
        self._client_factory = client_factory or self._default_client

    def with_taught(self, taught: Sequence[pointwise.Taught]) -> OpenAIJudge:
        """The same endpoint, taught these examples: a judge of its own (its own id, so its own cache)."""
        return OpenAIJudge(self.settings, self.formulation, self.tie_margin, self.template, self._client_factory, taught)

    def _default_client(self) -> openai.AsyncOpenAI:
        # Retries are ours (counted against the budget, with jitter), so the client's own are off.
        return openai.AsyncOpenAI(base_url=self.settings.base_url, api_key=self.settings.api_key(),
                                  max_retries=0, timeout=self.settings.timeout_s)

    # ---- the PairwiseJudge interface ----------------------------------------------------------
    def judge(self, items: Sequence[tuple[PairText, Order]], constitution: Constitution,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[OrderJudgment]:
        return asyncio.run(self._judge_all(items, constitution, progress))

    async def _judge_all(self, items, constitution, progress) -> list[OrderJudgment]:
        if self.formulation != "pairwise_json":
            return await self._judge_pointwise(items, constitution, progress)
        client = self._client_factory()
        gate = asyncio.Semaphore(self.settings.concurrency)
        done = [0]

        async def one(item: tuple[PairText, Order]) -> OrderJudgment:
            async with gate:
                result = await self._judge_one(client, item[0], item[1], constitution)
            done[0] += 1
            progress(done[0], len(items))
            return result

        try:
            return list(await asyncio.gather(*(one(item) for item in items)))
        finally:
            await client.close()

    # ---- pointwise: one yes/no request per (reply, principle) -----------------------------------
    async def _judge_pointwise(self, items, constitution: Constitution, progress) -> list[OrderJudgment]:
        """Every distinct (message, reply, principle) asked once; both orders of a pair read the same answers."""
        principles = [p for p in constitution.principles if p.judged]
        turns = pointwise.example_turns(self.template, constitution, principles, self.taught) \
            if self.formulation == "pointwise_fewshot" else []
        prefix = [{"role": "system", "content": self.template.system}]
        for example, answer in turns:  # identical in every request, first: a server's prefix cache reuses it
            prefix += [{"role": "user", "content": example}, {"role": "assistant", "content": answer}]
        keys = list(dict.fromkeys((pair.prompt, text, p.id) for pair, _ in items for p in principles
                                  for text in (pair.text_a, pair.text_b)))
        by_id = {p.id: p for p in principles}
        client, gate, done = self._client_factory(), asyncio.Semaphore(self.settings.concurrency), [0]

        async def ask(key: tuple[str, str, str]) -> PointwiseAnswer:
            message, reply, pid = key
            usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
            messages = prefix + [{"role": "user", "content": pointwise.question(self.template, by_id[pid], message, reply)}]
            async with gate:
                try:
                    content, token_logprobs = await self._complete(client, messages, usage, schema=None, max_tokens=1,
                                                                   top_logprobs=10)
                except BudgetExhausted as exc:
                    return PointwiseAnswer("error", None, str(exc), usage)
                except (openai.APIError, httpx.HTTPError) as exc:
                    return PointwiseAnswer("error", None, f"{type(exc).__name__}: {exc}", usage)
            done[0] += 1
            progress(done[0], len(keys))
            p_yes = yes_probability(token_logprobs)
            return PointwiseAnswer("ok", p_yes, content or "", usage) if p_yes is not None else \
                PointwiseAnswer("invalid", None, f"no yes/no among the answer's top tokens: {content!r}", usage)

        started = time.perf_counter()
        try:
            answers = dict(zip(keys, await asyncio.gather(*(ask(k) for k in keys))))
        finally:
            await client.close()
        seconds_per_item = (time.perf_counter() - started) / max(len(items), 1)
        results = []
        for pair, order in items:
            asked = {(p.id, side): answers[(pair.prompt, text, p.id)]
                     for p in principles for side, text in (("a", pair.text_a), ("b", pair.text_b))}
            usage = {k: sum(a.usage[k] for a in asked.values()) / 2 for k in ("prompt_tokens", "completion_tokens", "cost_usd")}
            usage["prompt_tokens"], usage["completion_tokens"] = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
            raw = json.dumps({f"{pid}/{side}": a.p_yes if a.status == "ok" else a.text for (pid, side), a in asked.items()})
            failed = [a for a in asked.values() if a.status != "ok"]
            if failed:
                status: ParseStatus = "error" if any(a.status == "error" for a in failed) else "invalid"
                results.append(OrderJudgment(order=order, parse_status=status, rationale=failed[0].text, raw_response=raw,
                                             latency_s=seconds_per_item, **usage))
                continue
            votes = check_votes(pair, constitution)
            for p in principles:
                votes[p.id] = pointwise.pair_vote(asked[(p.id, "a")].breaks(), asked[(p.id, "b")].breaks(), self.tie_margin)
            results.append(scored_judgment(order, votes, constitution, self.tie_margin, raw_response=raw,
                                           latency_s=seconds_per_item, **usage))
        return results

    # ---- one (pair, order) --------------------------------------------------------------------
    def principles_for(self, pair: PairText, constitution: Constitution) -> list[Principle]:
        """Model-judged principles; in Constitutional-AI mode a subset fixed by the pair (both orders see the same)."""
        judged = [p for p in constitution.principles if p.judged]
        k = self.settings.principles_per_comparison
        if k is None or k >= len(judged):
            return judged
        rng = random.Random(stable_int("cai-subset", pair.prompt, pair.text_a, pair.text_b))
        chosen = set(p.id for p in rng.sample(judged, k))
        return [p for p in judged if p.id in chosen]

    def render(self, pair: PairText, order: Order, principles: Sequence[Principle]) -> list[dict]:
        first, second = shown_texts(pair, order)
        hint = json.dumps({"votes": {p.id: "A | B | tie | n/a" for p in principles}, "rationale": "..."})
        user = self.template.user.format(
            principles="\n".join(f"- {p.id}: {p.text}" for p in principles), prompt=pair.prompt,
            response_a=first, response_b=second, schema_hint=hint)
        return [{"role": "system", "content": self.template.system}, {"role": "user", "content": user}]

    async def _judge_one(self, client, pair: PairText, order: Order, constitution: Constitution) -> OrderJudgment:
        principles = self.principles_for(pair, constitution)
        principle_ids = tuple(p.id for p in principles)
        schema = reply_model(principle_ids)
        messages = self.render(pair, order, principles)
        started = time.perf_counter()
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        raw: list[str] = []
        try:
            for _attempt in range(2):  # a reply that fails validation gets one retry with the error shown
                content, token_logprobs = await self._complete(
                    client, messages, usage, schema=response_format(principle_ids), max_tokens=self.settings.max_tokens,
                    top_logprobs=5 if self.settings.vote_logprobs else None)
                raw.append(content or "")
                try:
                    reply = parse_reply(content, schema)
                    break
                except ValidationError as exc:
                    error = _short_validation_error(exc)
                    messages = messages + [
                        {"role": "assistant", "content": content or ""},
                        {"role": "user", "content": f"That reply was not valid: {error}. Answer again with only the JSON object."},
                    ]
            else:
                return self._failed(order, "invalid", f"reply failed validation twice: {error}", raw, started, usage)
        except BudgetExhausted as exc:
            return self._failed(order, "error", str(exc), raw, started, usage)
        except (openai.APIError, httpx.HTTPError) as exc:
            return self._failed(order, "error", f"{type(exc).__name__}: {exc}", raw, started, usage)

        votes = check_votes(pair, constitution)
        slot_probs = vote_probabilities(token_logprobs, principle_ids) if token_logprobs else {}
        for p in principles:
            votes[p.id] = _to_pair_vote(getattr(reply.votes, p.id), order, slot_probs.get(p.id))
        score = weighted_score(votes, constitution)
        winner = winner_of(score, self.tie_margin)
        principle_part = "; ".join(f"{pid}={v.vote}" for pid, v in votes.items())
        return OrderJudgment(
            order=order, parse_status="ok", winner=winner, score=score, votes=votes,
            rationale=f"{reply.rationale} [{principle_part}]", raw_response="\n---\n".join(raw),
            latency_s=time.perf_counter() - started, **usage,
        )

    async def _complete(self, client, messages: list[dict], usage: dict, schema: dict | None, max_tokens: int,
                        top_logprobs: int | None) -> tuple[str | None, list | None]:
        """One chat completion with retries on transport faults; falls back from a JSON schema if refused.

        Returns the reply text and, when `top_logprobs` was asked for and the server sent them, its token logprobs.
        Transport faults are retried `max_retries` times, then raised; the JSON-schema fallback is not a retry.
        A server that refuses the schema (400) is asked this request again with the strict prompt alone;
        the next request offers the schema again (one odd request must not turn it off for good).
        """
        attempt = 0
        use_schema = schema is not None and self.settings.structured_output != "json_prompt"
        while True:
            self.spend.reserve()
            kwargs = dict(model=self.settings.model, messages=messages, temperature=self.settings.temperature,
                          max_tokens=max_tokens)
            if use_schema:
                kwargs["response_format"] = schema
            if top_logprobs:
                kwargs.update(logprobs=True, top_logprobs=top_logprobs)
            try:
                response = await client.chat.completions.create(**kwargs)
            except openai.BadRequestError:
                if use_schema and self.settings.structured_output == "auto":
                    use_schema = False  # refused: this request with the strict prompt alone
                    continue
                raise
            except RETRYABLE:
                if attempt == self.settings.max_retries:
                    raise
                ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** attempt)
                attempt += 1
                await asyncio.sleep(random.uniform(0, ceiling))  # full jitter
                continue
            if response.usage is not None:
                usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                usage["completion_tokens"] += response.usage.completion_tokens or 0
                usage["cost_usd"] += self.spend.charge(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
            if not response.choices:
                return None, None
            choice = response.choices[0]
            logprobs = choice.logprobs.content if choice.logprobs is not None else None
            return choice.message.content, logprobs

    def _failed(self, order: Order, status: ParseStatus, reason: str, raw: list[str], started: float, usage: dict) -> OrderJudgment:
        return OrderJudgment(order=order, parse_status=status, rationale=reason, raw_response="\n---\n".join(raw),
                             latency_s=time.perf_counter() - started, **usage)


def yes_probability(token_logprobs: list | None) -> float | None:
    """p("yes") renormalised over yes/no (any case, any leading space) at the answer's first token."""
    if not token_logprobs:
        return None
    mass = {"yes": 0.0, "no": 0.0}
    for alt in token_logprobs[0].top_logprobs or []:
        word = alt.token.strip().lower()
        if word in mass:
            mass[word] += math.exp(alt.logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def vote_probabilities(token_logprobs: list, principle_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """p("A"), p("B") (renormalised over the two) at the token where each principle's vote was written.

    The vote's position in the reply is found by its JSON key; the alternatives come from the
    server's top logprobs at the token covering the vote's first letter. Principles whose vote
    token cannot be located (or whose alternatives hold neither letter) are left out.
    """
    tokens = [t.token for t in token_logprobs]
    # Search the text the tokens spell, not `content`: servers may add or drop an end token.
    content = "".join(tokens)
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token)
    found = {}
    for pid in principle_ids:
        match = re.search(rf'"{re.escape(pid)}"\s*:\s*"(A|B|tie|n/a)"', content)
        if not match:
            continue
        at = max(i for i, start in enumerate(starts) if start <= match.start(1))
        prefix = content[starts[at]:match.start(1)]   # e.g. '"' when the token is '"A'
        mass = {"A": 0.0, "B": 0.0}
        for alt in token_logprobs[at].top_logprobs or []:
            if alt.token.startswith(prefix) and alt.token[len(prefix):len(prefix) + 1] in mass:
                mass[alt.token[len(prefix)]] += math.exp(alt.logprob)
        total = mass["A"] + mass["B"]
        if total > 0:
            found[pid] = (mass["A"] / total, mass["B"] / total)
    return found


def _to_pair_vote(slot: str, order: Order, slot_probs: tuple[float, float] | None = None) -> PrincipleVote:
    """The judge's slot vote (A/B) in pair terms (a/b); scored +-1, or p(A) - p(B) when logprobs are known."""
    if slot in ("tie", "n/a"):
        return PrincipleVote(vote=slot, score=0.0, source="model", detail=f"judge said {slot}")
    first_is_a = order == "ab"
    winner_is_a = (slot == "A") == first_is_a
    if slot_probs is None:
        score, detail = (1.0 if winner_is_a else -1.0), f"judge said {slot}"
    else:
        score = pair_score(slot_probs[0] - slot_probs[1], order)
        detail = f"judge said {slot}, p(A)={slot_probs[0]:.2f} p(B)={slot_probs[1]:.2f}"
    return PrincipleVote(vote="a" if winner_is_a else "b", score=score, source="model", detail=detail)


def _short_validation_error(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:5])
