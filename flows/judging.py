"""The config's judge: built, served (a managed server when the config names one) and qualified.

Used by the round and loop flows, `rlaif judge`, `rlaif judge qualify`, `rlaif compare` and the
benchmarks, so every one of them judges with the same judge and the same gate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from constitution.loader import Constitution
from flows.config import RoundConfig
from judges.qualification import (
    QualificationGate,
    QualificationResult,
    Split,
    build_cases,
    gate,
    qualify,
    set_hash,
)
from judges.server import running_judge_server
from judges.stage import PairwiseJudge
from lm.loading import base_checkpoint, load_model, load_tokenizer
from prompts.loader import load_prompts, select_heldout_prompts
from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample
from store.db import Store
from store.ids import stable_id
from store.rows import JudgeQualificationRow

Progress = Callable[[int, int], None]


class JudgeNotQualified(RuntimeError):
    """judge.require_qualified is set and the judge qualified on no model-judged principle."""


@contextmanager
def judge_server(config: RoundConfig) -> Iterator[None]:
    """Start the config's judge server for the block (if it names one and none answers yet), then stop it."""
    if config.judge.kind != "openai" or config.judge.server is None:
        yield
        return
    log = config.artifacts_dir() / "logs" / "judge-server.log"
    assert config.judge.openai is not None  # kind openai (checked by the config)
    with running_judge_server(config.judge.server, config.judge.openai.base_url, log):
        yield


def _answer_params(config: RoundConfig) -> SamplingParams:
    return config.sampler.params().model_copy(update={"n": 1, "max_new_tokens": config.judge.qualification_max_new_tokens})


def qualification_set(config: RoundConfig, constitution: Constitution, split: Split) -> tuple[str, list[str]]:
    """(set hash, prompts): known without sampling, so a stored result is found for free."""
    prompts = [p.text for p in select_heldout_prompts(load_prompts(config.prompts.source),
                                                      config.judge.qualification_prompts, config.seed)]
    answered_by = {"policy": stable_id("base", config.policy.path or "embedded"), "system": config.policy.system_prompt,
                   "params": _answer_params(config).model_dump(mode="json"), "seed": config.seed}
    return set_hash(constitution, prompts, answered_by, split), prompts


def policy_answers(config: RoundConfig, prompts: list[str]) -> list[str]:
    """One answer per prompt from the base policy (the same set every round, whatever was promoted)."""
    checkpoint = base_checkpoint(config.policy.path)
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    params = _answer_params(config)
    requests = [SampleRequest(key=str(i), system=config.policy.system_prompt, user=p) for i, p in enumerate(prompts)]
    answers = {c.key: c.text.strip() for c in sample(TransformersSampler(model, tokenizer), requests, params, config.seed)}
    return [answers[str(i)] or "(no answer)" for i in range(len(prompts))]


def qualification_for(store: Store | None, config: RoundConfig, constitution: Constitution, judge: PairwiseJudge,
                      split: Split = "qualify", progress: Progress = lambda done, total: None
                      ) -> tuple[QualificationResult, bool]:
    """The judge's stored qualification for this constitution and set, or a new one (stored).

    Returns (result, measured now). With `store=None` nothing is looked up or stored (benchmarks).
    """
    sid, prompts = qualification_set(config, constitution, split)
    if store is not None:
        row = store.qualification(judge.judge_id, constitution.content_hash, sid)
        if row is not None:
            return QualificationResult.model_validate(row.result_json), False
    answers = policy_answers(config, prompts)
    cases = build_cases(constitution, list(zip(prompts, answers)), split)
    result = qualify(judge, constitution, cases, sid, split, progress)
    if store is not None:
        store.append([qualification_row(result)])
    return result, True


def qualification_row(result: QualificationResult) -> JudgeQualificationRow:
    sens = [p.sensitivity for p in result.principles.values()]
    return JudgeQualificationRow(
        judge_id=result.judge_id, constitution_hash=result.constitution_hash, set_hash=result.set_hash,
        split=result.split, mean_sensitivity=sum(sens) / len(sens) if sens else None,
        position_consistency=result.position_consistency, slot_bias=result.slot_bias,
        result_json=result.model_dump(mode="json"))


def trusted_principles(store: Store, config: RoundConfig, constitution: Constitution, judge: PairwiseJudge,
                       progress: Progress = lambda done, total: None
                       ) -> tuple[QualificationGate, QualificationResult | None, bool]:
    """(the gate, the qualification behind it, whether it was measured now) for this judge and constitution."""
    result, measured = None, False
    if config.judge.qualify:
        result, measured = qualification_for(store, config, constitution, judge, "qualify", progress)
    return judge_gate(config, constitution, result), result, measured


def judge_gate(config: RoundConfig, constitution: Constitution, result: QualificationResult | None) -> QualificationGate:
    """Which model-judged principles count, by the config's bars (all of them when qualification is off)."""
    return gate(result, constitution, config.judge.min_sensitivity, config.judge.max_slot_bias)


def refuse_unqualified(config: RoundConfig, constitution: Constitution, trusted: QualificationGate) -> None:
    """judge.require_qualified: refuse (JudgeNotQualified) when the judge qualified on no model-judged principle."""
    if config.judge.require_qualified and not trusted.qualified and any(p.judged for p in constitution.principles):
        raise JudgeNotQualified(f"judge.require_qualified: the judge qualified on no model-judged principle "
                                f"({trusted.describe()}); refusing the round before sampling")
