"""Training as a round stage: trustworthy pairs from the store -> audit -> DPO -> adapter + lineage."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from peft import PeftModel
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lm.loading import encode_chat
from review.agreement import human_labels
from store.db import Store
from store.ids import stable_id
from store.rows import ModelRow, PairRecord, PreferenceRecord, TrainMetricRow, TrainRunRow
from training.audit import AuditedPair, ConfoundAudit, audit, balance_length
from training.trainer import DPOParams, PreferencePair, StepMetrics, TrainResult, add_lora, num_steps, train_dpo


class DataPolicy(BaseModel):
    """What the data must look like before anything trains."""

    model_config = ConfigDict(extra="forbid")
    min_pairs: int = Field(default=4, gt=0, description="fewer trustworthy pairs than this: do not train")
    confounds: Literal["balance", "refuse", "off"] = Field(
        default="balance", description="chosen-longer share outside length_band: drop pairs to fit, refuse, or only record")
    length_band: tuple[float, float] = Field(default=(0.4, 0.6), description="allowed share of pairs where chosen is longer")
    mix_rounds: int = Field(default=0, ge=0, description="also train on the trustworthy pairs of this many earlier rounds")

    @model_validator(mode="after")
    def _band(self) -> DataPolicy:
        low, high = self.length_band
        if not 0 <= low <= high <= 1:
            raise ValueError(f"length_band {list(self.length_band)}: need 0 <= low <= high <= 1")
        return self


class TrainOutcome(BaseModel):
    trained: bool
    reason: str
    run_id: str | None = None
    candidate_id: str | None = None
    n_pairs: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    audit: ConfoundAudit | None = None          # the trustworthy pairs as selected
    audit_trained: ConfoundAudit | None = None  # after balancing: what was trained on
    reference: str | None = None                # where the reference log-probs came from, and why
    collapsed: bool = False                     # stopped by the collapse guard: never promote


def select_preferences(records: Sequence[PairRecord], human: Mapping[str, str]) -> list[PreferenceRecord]:
    """The trustworthy preferences: a human label where one exists (a human tie drops the pair),
    else a valid judge verdict whose two orders agree on a winner."""
    selected, seen = [], set()
    for r in records:
        if r.pair_id in human:
            winner, source = human[r.pair_id], "human"
        elif r.verdict_status == "ok" and r.consistent:
            winner, source = r.judge_winner, "judge"
        else:
            continue
        if winner not in ("a", "b"):
            continue
        a, b = (r.text_a, r.ids_a, r.logp_a), (r.text_b, r.ids_b, r.logp_b)
        chosen, rejected = (a, b) if winner == "a" else (b, a)
        if (r.prompt, chosen[0], rejected[0]) in seen:  # the same preference twice would count double
            continue
        seen.add((r.prompt, chosen[0], rejected[0]))
        selected.append(PreferenceRecord(pair_id=r.pair_id, prompt=r.prompt, chosen_text=chosen[0], rejected_text=rejected[0],
                                         chosen_ids=chosen[1], rejected_ids=rejected[1], chosen_logp=chosen[2],
                                         rejected_logp=rejected[2], source=source,
                                         confidence=1.0 if source == "human" else r.confidence,
                                         rationale="human review" if source == "human" else r.rationale))
    return selected


def round_preferences(store: Store, round_id: str, judge_id: str, constitution_hash: str) -> list[PreferenceRecord]:
    """A round's trustworthy preferences, with its human reviews applied."""
    candidates = store.training_candidates(round_id, judge_id, constitution_hash)
    return select_preferences(candidates, human_labels(store.reviews_of_round(round_id)))


def earlier_preferences(store: Store, round_index: int, n_rounds: int) -> list[PreferenceRecord]:
    """Trustworthy preferences of the `n_rounds` finished rounds before `round_index` (recorded by pair id).

    Their completions were sampled by older policies, so their recorded log-probs are not this
    round's reference: they are dropped, and the trainer recomputes the reference.
    """
    finished = [r for r in store.rounds() if r.round_index < round_index and r.status == "finished" and r.judge_id]
    records = []
    for rnd in finished[-n_rounds:] if n_rounds else []:
        for r in round_preferences(store, rnd.round_id, rnd.judge_id, rnd.constitution_hash):
            records.append(r.model_copy(update={"chosen_logp": None, "rejected_logp": None}))
    return records


def build_preference_pairs(records: Sequence[PreferenceRecord], tokenizer: PreTrainedTokenizerBase,
                           system_prompt: str) -> list[AuditedPair]:
    """Tokenise prompts exactly as sampling did; completions keep the sampled token ids and log-probs."""
    return [
        AuditedPair(pair=PreferencePair(pair_id=r.pair_id, prompt_ids=encode_chat(tokenizer, system_prompt, r.prompt),
                                        chosen_ids=r.chosen_ids, rejected_ids=r.rejected_ids,
                                        chosen_sampled_logp=r.chosen_logp, rejected_sampled_logp=r.rejected_logp,
                                        confidence=r.confidence),
                    chosen_text=r.chosen_text, rejected_text=r.rejected_text)
        for r in records
    ]


def data_hash(pairs: Sequence[PreferencePair]) -> str:
    return stable_id("dpo-data", [(p.pair_id, p.chosen_ids, p.rejected_ids) for p in pairs])


def prepare_data(audited: Sequence[AuditedPair], data: DataPolicy) -> tuple[list[AuditedPair], TrainOutcome | None]:
    """Audit the trustworthy pairs and apply the data policy: (pairs to train, or a refusal)."""
    before = audit(audited)
    if len(audited) < data.min_pairs:
        return [], TrainOutcome(trained=False, n_pairs=len(audited), audit=before,
                                reason=f"only {len(audited)} trustworthy pairs (< min_pairs {data.min_pairs}): not training")
    low, high = data.length_band
    share = before.chosen_longer_share
    if data.confounds == "off" or share is None or low <= share <= high:
        return list(audited), None
    out_of_band = (f"chosen is longer in {share:.0%} of the pairs that differ in length (band {low:.0%}-{high:.0%}, "
                   f"mean log length ratio {before.mean_log_length_ratio:+.2f})")
    if data.confounds == "refuse":
        return [], TrainOutcome(trained=False, n_pairs=len(audited), audit=before,
                                reason=f"length confound: {out_of_band}: not training (training.confounds is refuse)")
    kept = balance_length(audited, low, high)
    if len(kept) < data.min_pairs:
        return [], TrainOutcome(trained=False, n_pairs=len(kept), audit=before, audit_trained=audit(kept),
                                reason=f"length confound: {out_of_band}; balancing leaves {len(kept)} pairs "
                                       f"(< min_pairs {data.min_pairs}): not training")
    return kept, None


class CandidatePlan(BaseModel):
    """What training a round's candidate means, fixed before any training: the same data and
    config give the same ids on every process and every rerun."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    pairs: list[PreferencePair]
    n_selected: int               # trustworthy pairs before length balancing
    audit: ConfoundAudit          # the trustworthy pairs as selected
    audit_trained: ConfoundAudit  # what is trained on
    data_hash: str
    config: dict
    run_id: str
    candidate_id: str
    adapter_dir: Path
    checkpoint_dir: Path


def plan_candidate(audited: Sequence[AuditedPair], params: DPOParams, data: DataPolicy, parent_id: str, round_id: str,
                   artifacts_dir: Path, seed: int) -> tuple[CandidatePlan | None, TrainOutcome | None]:
    """Audit and apply the data policy: (the plan, None) or (None, the refusal)."""
    kept, refusal = prepare_data(audited, data)
    if refusal is not None:
        return None, refusal
    before = audit(audited)
    pairs = [a.pair for a in kept]
    dhash = data_hash(pairs)
    config = {**params.model_dump(), **data.model_dump(), "seed": seed}
    run_id = stable_id("train-run", round_id, parent_id, dhash, config)
    candidate_id = stable_id("adapter", parent_id, dhash, config)
    return CandidatePlan(pairs=pairs, n_selected=len(audited), audit=before,
                         audit_trained=before if len(kept) == len(audited) else audit(kept),  # unbalanced: the same audit
                         data_hash=dhash, config=config, run_id=run_id, candidate_id=candidate_id,
                         adapter_dir=artifacts_dir / "adapters" / candidate_id,
                         checkpoint_dir=artifacts_dir / "checkpoints" / run_id), None


def recorded_outcome(store: Store, plan: CandidatePlan) -> TrainOutcome | None:
    """The outcome of an earlier run that trained and recorded this plan's candidate, if any."""
    if not (plan.adapter_dir / "adapter_config.json").is_file() or not store.by_ids(ModelRow, [plan.candidate_id]):
        return None
    runs = store.by_ids(TrainRunRow, [plan.run_id])
    if not runs:
        return None
    run, metrics = runs[plan.run_id], store.train_metrics(plan.run_id)
    reason = f"trained on {len(plan.pairs)} pairs" + (
        f" (of {plan.n_selected}, length-balanced)" if len(plan.pairs) < plan.n_selected else "")
    collapsed = run.audit_json.get("collapsed", False)
    if collapsed:
        reason = (f"training stopped at step {metrics[-1].step}: both rewards fell below "
                  f"-{plan.config['collapse_reward']:g} (collapse)")
    return TrainOutcome(trained=True, reason=reason, run_id=plan.run_id, candidate_id=plan.candidate_id,
                        n_pairs=len(plan.pairs), first_loss=metrics[0].loss if metrics else None,
                        last_loss=metrics[-1].loss if metrics else None, audit=plan.audit,
                        audit_trained=plan.audit_trained, reference=run.audit_json.get("reference"), collapsed=collapsed)


def fit_candidate(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, plan: CandidatePlan, params: DPOParams,
                  seed: int, on_step: Callable[[StepMetrics], None]) -> tuple[TrainResult, PeftModel]:
    """Train a fresh LoRA adapter on `policy` and save it to the plan's adapter dir.

    Under `accelerate launch` every process calls this; the main process writes the adapter.
    """
    from accelerate import PartialState

    model = add_lora(policy, params, seed)
    result = train_dpo(model, plan.pairs, params, tokenizer.pad_token_id, seed, on_step, checkpoint_dir=plan.checkpoint_dir)
    state = PartialState()
    if state.is_main_process:
        plan.adapter_dir.parent.mkdir(parents=True, exist_ok=True)
        # Save beside the final directory and rename: a crash never leaves a half-written adapter.
        staging = plan.adapter_dir.with_name(plan.adapter_dir.name + ".partial")
        model.save_pretrained(staging)
        if plan.adapter_dir.exists():
            shutil.rmtree(plan.adapter_dir)
        staging.rename(plan.adapter_dir)
    state.wait_for_everyone()
    return result, model


def record_candidate(store: Store, plan: CandidatePlan, result: TrainResult, parent_id: str, round_id: str,
                     round_index: int) -> TrainOutcome:
    """Write the train run and the candidate's `models` row (lineage), after its adapter is saved."""
    reference = f"{result.reference.source}: {result.reference.why}"
    run_audit = {"selected": plan.audit.model_dump(), "trained": plan.audit_trained.model_dump(), "reference": reference,
                 "collapsed": result.collapsed}
    store.append([TrainRunRow(run_id=plan.run_id, round_id=round_id, parent_model_id=parent_id,
                              candidate_id=plan.candidate_id, data_hash=plan.data_hash, n_pairs=len(plan.pairs),
                              audit_json=run_audit, config_json=plan.config)])
    store.append([ModelRow(model_id=plan.candidate_id, parent_id=parent_id, kind="adapter", path=str(plan.adapter_dir),
                           created_round=round_index, promoted=False,
                           promotion_reason="collapsed in training: never promoted" if result.collapsed else "not evaluated yet",
                           data_hash=plan.data_hash, config_json=plan.config)])
    shutil.rmtree(plan.checkpoint_dir, ignore_errors=True)
    outcome = recorded_outcome(store, plan)
    assert outcome is not None  # just written
    return outcome


def train_candidate(
    store: Store,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    audited: Sequence[AuditedPair],
    params: DPOParams,
    data: DataPolicy,
    parent_id: str,
    round_id: str,
    round_index: int,
    artifacts_dir: Path,
    seed: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
    launch: Callable[[], None] | None = None,
) -> tuple[TrainOutcome, PeftModel | None]:
    """Audit, then train a LoRA adapter on `policy` (if the data allows it) and record it.

    Returns the outcome and the policy wrapped with the candidate adapter (None if not trained).
    A candidate already trained by an earlier run of this round is loaded, not retrained; a run
    that crashed mid-training resumes from its last checkpoint. With `launch`, the training runs
    there instead (`rlaif train` under `accelerate launch`), which must record the candidate.
    """
    plan, refusal = plan_candidate(audited, params, data, parent_id, round_id, artifacts_dir, seed)
    if refusal is not None:
        return refusal, None
    assert plan is not None
    done = recorded_outcome(store, plan)
    if done is None and launch is not None:
        launch()
        done = recorded_outcome(store, plan)
        if done is None:
            raise RuntimeError(f"the launched training finished but did not record candidate {plan.candidate_id}")
    if done is not None:
        return done, PeftModel.from_pretrained(policy, plan.adapter_dir)

    total = num_steps(len(plan.pairs), params)
    progress(0, total)

    def on_step(m: StepMetrics) -> None:  # stored at once: a crashed run keeps the steps it finished
        store.append([TrainMetricRow(run_id=plan.run_id, **m.model_dump())])
        progress(m.step + 1, total)

    result, model = fit_candidate(policy, tokenizer, plan, params, seed, on_step)
    return record_candidate(store, plan, result, parent_id, round_id, round_index), model
