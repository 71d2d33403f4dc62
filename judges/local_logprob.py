"""A local judge that reads its verdict from next-token probabilities (no generation).

Three formulations, all one forward pass per request, batched, with checks deciding the rest:

- `principle_ab`: one principle per request, both replies shown; the vote is p("A") - p("B") at
  the token after a forced answer prefix (in pair terms, so it flips with the order).
- `pointwise` and `pointwise_fewshot` (judges/pointwise.py): one (reply, principle) per request,
  "does this reply break the principle? yes/no". Both orders get the same numbers, and a reply
  shared by several pairs (or by both orders) is scored once.

Prompt layout for prefix caching: everything shared by all requests (instructions, examples) comes
first, and its key/value cache is computed once; then what several requests share (the message and
the reply, asked about each principle in turn) once per reply; only the principle's question is run
per request.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from constitution.loader import Constitution, Principle
from judges import pointwise
from judges.checks import check_votes
from judges.templates import JudgeTemplate, load_template
from judges.verdict import Order, OrderJudgment, PairText, PrincipleVote, pair_score, scored_judgment, shown_texts, winner_of
from lm.batching import chunks, pad_rows
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
        settings: dict[str, object] = {"tie_margin": tie_margin, "max_completion_tokens": max_completion_tokens}
        if formulation != "principle_ab":  # a new question is a new judge: qualified afresh
            settings["template"] = self.template.version
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
        # requests differing only in the principle (the key's last part) share the reply's cache
        fresh = self._score([requests[k] for k in keys], self._prefix_ids(turns), [k[:-1] for k in keys], progress)
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
    def _score(self, prompts: list[list[int]], prefix: list[int], groups: Sequence[Hashable],
               progress: Callable[[int, int], None]) -> list[tuple[float, float]]:
        """(p(first answer), p(second answer)) renormalised over the two, per prompt.

        Each prompt is read in three parts, so that what several prompts share is run once:
        - `prefix`, which every prompt starts with (the instructions and examples): once;
        - its group's middle: the tokens all prompts with the same `groups` key share after the prefix
          (the message and the reply, which the pointwise template puts before the principle);
          a prompt alone in its group has everything but its last token as its middle;
        - its own tail (the principle's question), at least one token: the answer is read at its end.
        Up to `batch_size` groups' middles run as one batch, then their tails in batches of
        `batch_size`, each row reading its group's cache. On a CPU a forward pass costs at least one
        read of every weight, so rows are batched even when they are short.
        """
        if prefix and any(p[:len(prefix)] != prefix for p in prompts):
            prefix = []  # a tokenizer merged across the boundary: no sharing (correct, only slower)
        members: dict[Hashable, list[int]] = {}
        for i, group in enumerate(groups):
            members.setdefault(group, []).append(i)
        parts: list[tuple[int, list[int]]] = []  # (where the group's middle ends, its prompts)
        for rows in members.values():
            common = min(_common_length([prompts[i] for i in rows]), min(len(prompts[i]) for i in rows) - 1)
            if common > len(prefix) or len(rows) == 1:
                parts.append((max(common, len(prefix)), rows))
            else:  # nothing shared beyond the prefix: alone, each is its own group
                parts += [(len(prompts[i]) - 1, [i]) for i in rows]
        parts.sort(key=lambda part: part[0])  # similar middles share a batch: little padding
        shared = self._read(None, [prefix])[0] if prefix else None                               # (1, heads, P, head_dim) per layer
        out: list[tuple[float, float]] = [(0.5, 0.5)] * len(prompts)
        done = 0
        for batch in chunks(parts, self.batch_size):
            middles = [prompts[rows[0]][len(prefix):end] for end, rows in batch]
            cache, middle_mask = self._read(shared, middles)                                    # rows: one per group
            tails = [(g, i) for g, (end, rows) in enumerate(batch) for i in rows]
            for chunk in chunks(tails, self.batch_size):
                which = torch.tensor([g for g, _ in chunk])
                probs = self._answer_probs(cache, middle_mask[which], len(prefix),
                                           [prompts[i][batch[g][0]:] for g, i in chunk], which)
                for (_, i), p in zip(chunk, probs):
                    out[i] = p
                done += len(chunk)
                progress(done, len(prompts))
        if not prompts:
            progress(1, 1)
        return out

    def _read(self, shared: DynamicCache | None, rows: list[list[int]]) -> tuple[DynamicCache | None, torch.Tensor]:
        """(the key/value cache of `shared` (one row, left as it is) followed by each of `rows`, right
        padded, one cache row per row; the (len(rows), W) mask of their real tokens)."""
        device = self.model.device
        ids, mask = pad_rows(rows, self.tokenizer.pad_token_id, "right")                           # (G, W)
        g, width = ids.shape
        cache = DynamicCache() if shared is None else _rows(shared, torch.zeros(g, dtype=torch.long))
        if width == 0:
            return (None if shared is None else cache), mask
        start = _length(shared)
        attention = torch.cat([torch.ones((g, start), dtype=torch.long), mask], dim=1)             # (G, S + W)
        positions = torch.arange(start, start + width, device=device).expand(g, width)
        self.model.base_model(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions,
                              use_cache=True, **{self._cache_kw: cache})
        return cache, mask

    def _answer_probs(self, cache: DynamicCache | None, middle_mask: torch.Tensor, prefix_length: int,
                      tails: list[list[int]], rows: torch.Tensor) -> list[tuple[float, float]]:
        """One forward of `tails` (each >= 1 token), tail k after row `rows[k]` of `cache`: the prefix and
        that row's middle, whose real tokens `middle_mask[k]` marks."""
        device = self.model.device
        input_ids, tail_mask = pad_rows(tails, self.tokenizer.pad_token_id, "right")              # (b, W) right padded
        b, width = input_ids.shape
        attention = torch.cat([torch.ones((b, prefix_length), dtype=torch.long), middle_mask, tail_mask], dim=1)  # (b, P + M + W)
        middle = middle_mask.sum(dim=1, keepdim=True)                                            # (b, 1) real middle tokens
        position_ids = (prefix_length + middle + torch.arange(width)).to(device)                  # (b, W) each row continues its own middle
        batch_cache = None if cache is None else _rows(cache, rows)
        hidden = self.model.base_model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                       position_ids=position_ids, use_cache=batch_cache is not None,
                                       **{self._cache_kw: batch_cache}).last_hidden_state         # (b, W, d)
        last = torch.tensor([len(t) - 1 for t in tails], device=device)
        logits = self.model.get_output_embeddings()(hidden[torch.arange(b, device=device), last])  # (b, V): only the answer position
        probs = torch.softmax(logits.float(), dim=-1)
        first = probs[:, self._answer_ids[0]].sum(-1)
        second = probs[:, self._answer_ids[1]].sum(-1)
        total = (first + second).clamp(min=1e-12)
        return [(float(f / t), float(s / t)) for f, s, t in zip(first, second, total)]


def _common_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares."""
    length = min(len(r) for r in rows)
    for i in range(length):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return length


def _length(cache: DynamicCache | None) -> int:
    return 0 if cache is None else _layers(cache)[0][0].shape[2]


def _rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache of the given rows of `cache` (repeats allowed); `cache` is not written to."""
    picked = DynamicCache()
    for layer, (keys, values) in enumerate(_layers(cache)):
        index = rows.to(keys.device)
        picked.update(keys.index_select(0, index), values.index_select(0, index), layer)
    return picked


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a filled cache, each (rows, kv heads, tokens, head_dim)."""
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]  # attention layers only
