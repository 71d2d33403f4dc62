"""A round's candidate: plan it (ids fixed by data and config), train a LoRA adapter with DPO, record
it (train run, metrics, the `models` row of its lineage). A planned candidate that was already
recorded is reloaded, not retrained. flows/train.py puts these together, once, for the round and
for `rlaif train`."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from peft import PeftModel
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from store.db import Store
from store.ids import stable_id
from store.rows import ModelRow, StepMetrics, TrainRunRow
from training.audit import AuditedPair, ConfoundAudit, audit
from training.data import DataPolicy, prepare_data
from training.pairs import PreferencePair
from training.trainer import DPOParams, TrainResult, add_lora, train_dpo


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


def data_hash(pairs: Sequence[PreferencePair]) -> str:
    return stable_id("dpo-data", [(p.pair_id, p.chosen_ids, p.rejected_ids) for p in pairs])


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
        return None, TrainOutcome(trained=False, **refusal.model_dump())
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
        model.save_pretrained(str(staging))
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
