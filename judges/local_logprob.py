"""A local judge that reads its verdict from next-token probabilities (no generation).

For every principle without an executable check, the judge model sees the principle, the customer
message and both replies, and we compare p("A") with p("B") for the token after a forced answer
prefix. One forward pass per (pair, order, principle), batched; checks decide the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from constitution.loader import Constitution
from judges.checks import check_votes
from judges.templates import JudgeTemplate, load_template
from judges.verdict import Order, OrderJudgment, PairText, PrincipleVote, weighted_score, winner_of
from store.ids import stable_id

TEMPLATE_NAME = "pairwise_principle_v1"


class LocalLogprobJudge:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_name: str,
        batch_size: int = 8,
        tie_margin: float = 0.05,
        max_completion_tokens: int = 160,
        template: JudgeTemplate | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.tie_margin, self.max_completion_tokens = batch_size, tie_margin, max_completion_tokens
        self.template = template or load_template(TEMPLATE_NAME)
        settings = {"tie_margin": tie_margin, "max_completion_tokens": max_completion_tokens}
        self.judge_id = f"local_logprob:{model_name}:{stable_id(settings)[:6]}"
        self.prompt_version = self.template.version
        self._verdict_ids = (self._answer_token("A"), self._answer_token("B"))

    def _answer_token(self, letter: str) -> int:
        """The token id the model would emit for `letter` right after the assistant prefix."""
        prefix = self._chat_ids("")
        full = self.tokenizer(self._render_chat("") + letter, add_special_tokens=False)["input_ids"]
        if full[:len(prefix)] != prefix or len(full) != len(prefix) + 1:
            raise ValueError(f"answer {letter!r} is not a single token after the judge prompt prefix")
        return full[-1]

    def _render_chat(self, user: str) -> str:
        messages = [{"role": "system", "content": self.template.system}, {"role": "user", "content": user}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + self.template.assistant_prefix

    def _chat_ids(self, user: str) -> list[int]:
        return self.tokenizer(self._render_chat(user), add_special_tokens=False)["input_ids"]

    def _truncate(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_completion_tokens:
            return text
        return self.tokenizer.decode(ids[: self.max_completion_tokens]) + " ..."

    def judge(
        self,
        items: Sequence[tuple[PairText, Order]],
        constitution: Constitution,
        progress: Callable[[int, int], None] = lambda done, total: None,
    ) -> list[OrderJudgment]:
        """Judge each (pair, order); returns one OrderJudgment per item, in order.

        `progress(done, total)` is called as model forward passes complete.
        """
        model_principles = [p for p in constitution.principles if p.check is None]
        # One scoring job per (item, principle): build every prompt, then run them in batches.
        jobs: list[tuple[int, str, list[int]]] = []
        for index, (pair, order) in enumerate(items):
            first, second = (pair.text_a, pair.text_b) if order == "ab" else (pair.text_b, pair.text_a)
            for principle in model_principles:
                user = self.template.user.format(
                    principle=principle.text, prompt=pair.prompt,
                    response_a=self._truncate(first), response_b=self._truncate(second),
                )
                jobs.append((index, principle.id, self._chat_ids(user)))
        started = time.perf_counter()
        slot_probs = self._score([ids for _, _, ids in jobs], progress)
        seconds_per_item = (time.perf_counter() - started) / max(len(items), 1)

        probs: list[dict[str, tuple[float, float]]] = [{} for _ in items]
        tokens = [0] * len(items)
        for (index, principle_id, ids), p in zip(jobs, slot_probs):
            probs[index][principle_id] = p
            tokens[index] += len(ids)
        results = []
        for index, (pair, order) in enumerate(items):
            votes = check_votes(pair, constitution)
            for principle in model_principles:
                p_first, p_second = probs[index][principle.id]
                slot_score = p_first - p_second                 # > 0 favours whichever reply was shown first
                score = slot_score if order == "ab" else -slot_score
                votes[principle.id] = PrincipleVote(
                    vote=winner_of(score, self.tie_margin), score=score, source="model",
                    detail=f"p(A)={p_first:.2f} p(B)={p_second:.2f}",
                )
            score = weighted_score(votes, constitution)
            winner = winner_of(score, self.tie_margin)
            raw = {pid: {"p_A": round(a, 4), "p_B": round(b, 4)} for pid, (a, b) in probs[index].items()}
            results.append(
                OrderJudgment(
                    order=order, parse_status="ok", winner=winner, score=score, votes=votes,
                    rationale=_rationale(winner, score, votes, constitution),
                    raw_response=json.dumps(raw), latency_s=seconds_per_item, prompt_tokens=tokens[index],
                )
            )
        return results

    @torch.no_grad()
    def _score(self, prompts: list[list[int]], progress: Callable[[int, int], None]) -> list[tuple[float, float]]:
        """(p(A), p(B)) renormalised over the two letters, per prompt. Batched, sorted by length."""
        pad = self.tokenizer.pad_token_id
        by_length = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[tuple[float, float]] = [(0.5, 0.5)] * len(prompts)
        for start in range(0, len(by_length), self.batch_size):
            chunk = by_length[start:start + self.batch_size]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)      # (b, W) left padded
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]):] = 1
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                                logits_to_keep=1, use_cache=False).logits[:, -1]          # (b, V)
            two = torch.softmax(logits[:, list(self._verdict_ids)].float(), dim=-1)      # (b, 2): A, B
            for row, i in enumerate(chunk):
                out[i] = (float(two[row, 0]), float(two[row, 1]))
            progress(min(start + len(chunk), len(prompts)), len(prompts))
        return out


def _rationale(winner: str, score: float, votes: dict[str, PrincipleVote], constitution: Constitution) -> str:
    """The preference basis in one line: overall call, then each principle's vote and evidence."""
    parts = []
    for principle in constitution.principles:
        v = votes.get(principle.id)
        if v is not None:
            parts.append(f"{principle.id}={v.vote} ({v.detail})")
    head = "tie" if winner == "tie" else f"{winner} preferred"
    return f"{head}, weighted score {score:+.2f}: " + "; ".join(parts)
