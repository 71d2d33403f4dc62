"""A local judge that reads its verdict from next-token probabilities (no generation).

Three formulations, all one forward pass per request, batched, with checks deciding the rest:

- `principle_ab`: one principle per request, both replies shown; the vote is p("A") - p("B") at
  the token after a forced answer prefix (in pair terms, so it flips with the order).
- `pointwise` and `pointwise_fewshot` (judges/pointwise.py): one (reply, principle) per request,
  "does this reply break the principle? yes/no". Both orders get the same numbers, and a reply
  shared by several pairs (or by both orders) is scored once.

Prompt layout for prefix caching: everything shared by all requests (instructions, examples) comes
first, and its key/value cache is computed once per batch shape and reused; the pair comes last.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from constitution.loader import Constitution, Principle
from judges import pointwise
from judges.checks import check_votes
from judges.templates import JudgeTemplate, load_template
from judges.verdict import Order, OrderJudgment, PairText, PrincipleVote, pair_score, scored_judgment, shown_texts, winner_of
from lm.batching import pad_rows
from lm.loading import chat_text
from store.ids import stable_id

LocalFormulation = Literal["principle_ab", "pointwise", "pointwise_fewshot"]
TEMPLATES: dict[str, str] = {"principle_ab": "pairwise_principle_v2", "pointwise": pointwise.TEMPLATE_NAME,
                             "pointwise_fewshot": pointwise.TEMPLATE_NAME}


class LocalLogprobJudge:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        batch_size: int = 8,
        tie_margin: float = 0.02,
        max_completion_tokens: int = 160,
        formulation: LocalFormulation = "pointwise_fewshot",
        taught: Sequence[pointwise.Taught] = (),
    ):
        """`taught`: worked examples from people (pointwise_fewshot only); they are part of the judge's id."""
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.taught = list(taught) if formulation == "pointwise_fewshot" else []
        self.batch_size, self.tie_margin, self.max_completion_tokens = batch_size, tie_margin, max_completion_tokens
        self.formulation = formulation
        self.template: JudgeTemplate = load_template(TEMPLATES[formulation])
        settings = {"tie_margin": tie_margin, "max_completion_tokens": max_completion_tokens}
        suffix = "" if formulation == "principle_ab" else f":{formulation}"  # principle_ab keeps its old ids
        self.judge_id = f"local_logprob:{model_name}:{stable_id(settings)[:6]}{suffix}"
        if self.taught:
            self.judge_id += f"+taught:{stable_id([t.model_dump() for t in self.taught])[:6]}"
        self.prompt_version = self.template.version
        # transformers renamed `past_key_values` to `cache` in 5.2x: use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(model.base_model.forward).parameters else "past_key_values"
        letters = ("A", "B") if formulation == "principle_ab" else ("yes", "no")
        self._answer_ids = [self._answer_tokens(letter) for letter in letters]
        # every request this judge has scored (what the model reads -> its two answer probabilities):
        # a reply met again in a new pair, or in a later call, is not scored again
        self._scored: dict[tuple, tuple[float, float]] = {}

    # ---- prompts --------------------------------------------------------------------------------
    def _answer_tokens(self, word: str) -> list[int]:
        """Single-token spellings of `word` right after the assistant prefix ("yes" and "Yes", ...)."""
        prefix = self._chat_ids([])
        found = []
        for spelling in dict.fromkeys([word, word.capitalize(), word.lower()]):
            full = self.tokenizer(self._render(self._messages([], "")) + spelling, add_special_tokens=False)["input_ids"]
            if full[:len(prefix)] == prefix and len(full) == len(prefix) + 1:
                found.append(full[-1])
        if not found:
            raise ValueError(f"answer {word!r} is not a single token after the judge prompt prefix")
        return found

    def _messages(self, turns: list[tuple[str, str]], user: str | None = None) -> list[dict]:
        messages = [{"role": "system", "content": self.template.system}]
        for question, answer in turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if user is not None:
            messages.append({"role": "user", "content": user})
        return messages

    def _render(self, messages: list[dict]) -> str:
        return chat_text(self.tokenizer, messages, add_generation_prompt=True) + self.template.assistant_prefix

    def _chat_ids(self, turns: list[tuple[str, str]], user: str = "") -> list[int]:
        return self.tokenizer(self._render(self._messages(turns, user)), add_special_tokens=False)["input_ids"]

    def _prefix_ids(self, turns: list[tuple[str, str]]) -> list[int]:
        """The tokens every request starts with: the instructions and the worked examples."""
        return self.tokenizer(chat_text(self.tokenizer, self._messages(turns), add_generation_prompt=False),
                              add_special_tokens=False)["input_ids"]

    def _truncate(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_completion_tokens:
            return text
        cut = self.tokenizer.decode(ids[: self.max_completion_tokens])
        assert isinstance(cut, str)  # one sequence in, one string out
        return cut + " ..."

    def _examples(self, constitution: Constitution, principles: Sequence[Principle]) -> list[tuple[str, str]]:
        if self.formulation != "pointwise_fewshot":
            return []
        return pointwise.example_turns(self.template, constitution, principles, self.taught)

    def with_taught(self, taught: Sequence[pointwise.Taught]) -> LocalLogprobJudge:
        """The same model, taught these examples: a judge of its own (its own id, so its own cache)."""
        return LocalLogprobJudge(self.model, self.tokenizer, self.model_name, self.batch_size, self.tie_margin,
                                 self.max_completion_tokens, self.formulation, taught)

    # ---- judging --------------------------------------------------------------------------------
    def judge(
        self,
        items: Sequence[tuple[PairText, Order]],
        constitution: Constitution,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> list[OrderJudgment]:
        """Judge each (pair, order); returns one OrderJudgment per item, in order.

        `progress(done, total)` is called as model forward passes complete.
        """
        model_principles = [p for p in constitution.principles if p.judged]
        turns = self._examples(constitution, model_principles)
        # One scoring request per (what the model reads); identical requests are scored once.
        requests: dict[tuple, list[int]] = {}
        needed: set[tuple] = set()
        for pair, order in items:
            for principle in model_principles:
                for key, user in self._requests(pair, order, principle):
                    key = (constitution.content_hash, *key)  # the worked examples come from the constitution
                    needed.add(key)
                    if key not in requests and key not in self._scored:
                        requests[key] = self._chat_ids(turns, user)
        started = time.perf_counter()
        keys = list(requests)
        fresh = self._score([requests[k] for k in keys], self._prefix_ids(turns), progress) if keys else []
        if not keys:
            progress(1, 1)
        self._scored.update(zip(keys, fresh))
        probs = {key[1:]: self._scored[key] for key in needed}
        seconds_per_item = (time.perf_counter() - started) / max(len(items), 1)
        tokens_per_item = sum(len(ids) for ids in requests.values()) // max(len(items), 1)

        results = []
        for pair, order in items:
            votes, raw = check_votes(pair, constitution), {}
            for principle in model_principles:
                votes[principle.id], raw[principle.id] = self._vote(pair, order, principle, probs)
            results.append(scored_judgment(order, votes, constitution, self.tie_margin, raw_response=json.dumps(raw),
                                           latency_s=seconds_per_item, prompt_tokens=tokens_per_item))
        return results

    def _requests(self, pair: PairText, order: Order, principle: Principle) -> list[tuple[tuple, str]]:
        if self.formulation == "principle_ab":
            first, second = shown_texts(pair, order)
            user = self.template.user.format(principle=principle.text, prompt=pair.prompt,
                                             response_a=self._truncate(first), response_b=self._truncate(second))
            return [(("ab", pair.prompt, first, second, principle.id), user)]
        return [(("pw", pair.prompt, text, principle.id),
                 pointwise.question(self.template, principle, pair.prompt, self._truncate(text)))
                for text in (pair.text_a, pair.text_b)]

    def _vote(self, pair: PairText, order: Order, principle: Principle, probs: dict) -> tuple[PrincipleVote, dict]:
        if self.formulation != "principle_ab":
            breaks_a = probs[("pw", pair.prompt, pair.text_a, principle.id)][0]
            breaks_b = probs[("pw", pair.prompt, pair.text_b, principle.id)][0]
            raw = {"p_breaks_a": round(breaks_a, 4), "p_breaks_b": round(breaks_b, 4)}
            return pointwise.pair_vote(breaks_a, breaks_b, self.tie_margin), raw
        first, second = shown_texts(pair, order)
        p_first, p_second = probs[("ab", pair.prompt, first, second, principle.id)]
        score = pair_score(p_first - p_second, order)
        vote = PrincipleVote(vote=winner_of(score, self.tie_margin), score=score, source="model",
                             detail=f"p(A)={p_first:.2f} p(B)={p_second:.2f}")
        return vote, {"p_A": round(p_first, 4), "p_B": round(p_second, 4)}

    @torch.no_grad()
    def _score(self, prompts: list[list[int]], prefix: list[int],
               progress: Callable[[int, int], None]) -> list[tuple[float, float]]:
        """(p(first answer), p(second answer)) renormalised over the two, per prompt.

        Every prompt starts with `prefix` (the shared instructions and examples): its key/value cache
        is computed once and each batch reads it, so only the per-request tails are run. Tails are
        right padded; each row's answer distribution is read at its own last token.
        """
        pad, device = self.tokenizer.pad_token_id, self.model.device
        if prefix and any(p[:len(prefix)] != prefix for p in prompts):
            prefix = []  # a tokenizer merged across the boundary: no sharing (correct, only slower)
        shared = None
        if prefix:
            shared = DynamicCache()
            self.model.base_model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **{self._cache_kw: shared})
        tails = [p[len(prefix):] for p in prompts]
        by_length = sorted(range(len(prompts)), key=lambda i: len(tails[i]))
        out: list[tuple[float, float]] = [(0.5, 0.5)] * len(prompts)
        for start in range(0, len(by_length), self.batch_size):
            chunk = by_length[start:start + self.batch_size]
            input_ids, tail_mask = pad_rows([tails[i] for i in chunk], pad, "right")              # (b, W) right padded
            b, width = input_ids.shape
            attention = torch.cat([torch.ones((b, len(prefix)), dtype=torch.long), tail_mask], dim=1)  # (b, P + W)
            input_ids, attention = input_ids.to(device), attention.to(device)
            position_ids = torch.arange(len(prefix), len(prefix) + width, device=device).expand(b, width)
            cache = None
            if shared is not None:
                cache = DynamicCache()
                for layer, (keys, values) in enumerate(_layers(shared)):
                    cache.update(keys.expand(b, -1, -1, -1).contiguous(), values.expand(b, -1, -1, -1).contiguous(), layer)
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                                           use_cache=cache is not None, **{self._cache_kw: cache}).last_hidden_state  # (b, W, d)
            last = torch.tensor([len(tails[i]) - 1 for i in chunk], device=device)
            logits = self.model.get_output_embeddings()(hidden[torch.arange(b, device=device), last])         # (b, V): only the answer position
            probs = torch.softmax(logits.float(), dim=-1)
            first = probs[:, self._answer_ids[0]].sum(-1)
            second = probs[:, self._answer_ids[1]].sum(-1)
            total = (first + second).clamp(min=1e-12)
            for row, i in enumerate(chunk):
                out[i] = (float(first[row] / total[row]), float(second[row] / total[row]))
            progress(min(start + b, len(prompts)), len(prompts))
        return out


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a filled cache, each (1, heads, P, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]  # attention layers only
