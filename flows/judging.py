"""The config's judge: built, served (a managed server when the config names one) and qualified.

Used by the round and loop flows, `rlaif judge`, `rlaif judge qualify`, `rlaif compare` and the
benchmarks, so every one of them judges with the same judge and the same gate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from constitution.loader import Constitution
from flows.config import RoundConfig
from judges.pointwise import Taught
from judges.qualification import (
    PeopleBars,
    QualificationGate,
    QualificationResult,
    Split,
    build_cases,
    gate,
    qualify,
    set_hash,
)
from judges.server import running_judge_server
from judges.stage import PairwiseJudge, judge_pairs
from lm.loading import base_checkpoint, load_model, load_tokenizer
from prompts.loader import load_prompts, select_heldout_prompts
from review.agreement import agreement_with_people
from review.gold import store_gold, usable
from review.labels import principle_labels
from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample
from stats.agreement import LabelAgreement
from store.db import Store
from store.ids import stable_id, stable_int
from store.rows import JudgeQualificationRow, PairRow

Progress = Callable[[int, int], None]
log = logging.getLogger(__name__)


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
    answered_by = {"policy": stable_id("base", config.policy.path or "embedded"), "system": config.system_prompt(),
                   "params": _answer_params(config).model_dump(mode="json"), "seed": config.seed}
    return set_hash(constitution, prompts, answered_by, split), prompts


def policy_answers(config: RoundConfig, prompts: list[str]) -> list[str]:
    """One answer per prompt from the base policy (the same set every round, whatever was promoted)."""
    checkpoint = base_checkpoint(config.policy.path)
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    params = _answer_params(config)
    requests = [SampleRequest(key=str(i), system=config.system_prompt(), user=p) for i, p in enumerate(prompts)]
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
    """(the gate, the synthetic qualification behind it, whether that was measured now) for the config's
    judge and constitution.

    The judge is first taught by people (`judge.examples_from_people`); the gate's `taught` holds the
    examples, and every judgment after it is the taught judge's (`taught_judge`). Agreement with
    people then comes first; the synthetic qualification is measured only if some model-judged
    principle lacks `review.min_reviewed` labels from people."""
    teaching = store_gold_sets(store, config, constitution)
    examples = choose_examples(store, constitution, judge, teaching, config.judge.examples_from_people, progress)
    judge = taught_judge(judge, examples)
    not_evidence = teaching | {t.pair_id for t in examples}
    labelled = {r.pair_id for r in store.principle_reviews()} - not_evidence
    judge_pairs(store, judge, constitution, list(store.by_ids(PairRow, labelled).values()), progress)  # cached
    people = agreement_with_people(store, judge.judge_id, constitution.content_hash, exclude=not_evidence)
    judged = [p.id for p in constitution.principles if p.judged]
    decided = all(people.get(pid) is not None and people[pid].n >= config.review.min_reviewed for pid in judged)
    result, measured = None, False
    if config.judge.qualify and not decided:
        result, measured = qualification_for(store, config, constitution, judge, "qualify", progress)
    trusted = judge_gate(config, constitution, result, people)
    return trusted.model_copy(update={"taught": examples}), result, measured


def taught_judge(judge: PairwiseJudge, taught: Sequence[Taught]) -> PairwiseJudge:
    """The judge with people's worked examples (a judge that takes none stays as it is)."""
    teach = getattr(judge, "with_taught", None)
    return teach(taught) if taught and teach is not None else judge


def store_gold_sets(store: Store, config: RoundConfig, constitution: Constitution) -> frozenset[str]:
    """Store the config's gold sets (idempotent); returns their teaching parts' pairs, which are never evidence."""
    teaching: set[str] = set()
    for source in config.review.gold:
        why_not = usable(source, constitution)
        if why_not is not None:
            log.warning("%s: not used", why_not)
            continue
        teaching |= {g.pair.pair_id for g in store_gold(store, source, constitution) if g.part == "teach"}
    return frozenset(teaching)


def choose_examples(store: Store, constitution: Constitution, judge: PairwiseJudge, teaching: frozenset[str],
                    per_principle: int, progress: Progress = lambda done, total: None, chunk: int = 8) -> list[Taught]:
    """Per model-judged principle, up to `per_principle` pairs people labelled on it with a winner, on
    which the judge's vote differs from theirs: from the gold sets' teaching parts and from
    spot-checks (never a gold set's measuring part). Candidates are judged a few at a time, in a
    fixed order, only until every principle has its examples."""
    judged = {p.id for p in constitution.principles if p.judged}
    if per_principle == 0 or not judged or getattr(judge, "with_taught", None) is None:
        return []
    gold = set(store.pair_texts("gold"))
    said = {key: label for key, label in principle_labels(store.principle_reviews()).items()
            if label in ("a", "b") and key[1] in judged and (key[0] in teaching or key[0] not in gold)}
    candidates = sorted({pair_id for pair_id, _ in said}, key=lambda pid: stable_int("teach", pid))
    found: dict[str, list[Taught]] = {pid: [] for pid in judged}
    for start in range(0, len(candidates), chunk):
        if all(len(v) >= per_principle for v in found.values()):
            break
        chunk_ids = candidates[start:start + chunk]
        pairs = list(store.by_ids(PairRow, chunk_ids).values())
        verdicts = judge_pairs(store, judge, constitution, pairs, progress)
        texts = store.pair_texts_of(chunk_ids)
        for pair_id in chunk_ids:
            verdict = verdicts.get(pair_id)
            for principle in sorted(judged):
                label = said.get((pair_id, principle))
                if label is None or verdict is None or verdict.status != "ok" or len(found[principle]) >= per_principle:
                    continue
                if verdict.votes_json.get(principle) != label:
                    message, text_a, text_b = texts[pair_id]
                    chosen, rejected = (text_a, text_b) if label == "a" else (text_b, text_a)
                    found[principle].append(Taught(pair_id=pair_id, principle=principle, message=message,
                                                   chosen=chosen, rejected=rejected))
    return [t for pid in sorted(found) for t in found[pid]]


def judge_gate(config: RoundConfig, constitution: Constitution, result: QualificationResult | None,
               people: dict[str, LabelAgreement] | None = None) -> QualificationGate:
    """Which model-judged principles count, by the config's bars: agreement with people where there are
    enough labels, else the synthetic qualification (all of them when qualification is off)."""
    return gate(result, constitution, config.judge.min_sensitivity, config.judge.max_slot_bias, people,
                PeopleBars(min_reviewed=config.review.min_reviewed, min_kappa=config.review.min_kappa))


def refuse_unqualified(config: RoundConfig, constitution: Constitution, trusted: QualificationGate) -> None:
    """judge.require_qualified: refuse (JudgeNotQualified) when the judge qualified on no model-judged principle."""
    if config.judge.require_qualified and not trusted.qualified and any(p.judged for p in constitution.principles):
        raise JudgeNotQualified(f"judge.require_qualified: the judge qualified on no model-judged principle "
                                f"({trusted.describe()}); refusing the round before sampling")
