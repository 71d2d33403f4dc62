"""Training as a round stage: trustworthy pairs from the store -> audit -> DPO -> adapter + lineage."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from peft import PeftModel
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lm.loading import encode_chat
from store.db import Store
from store.ids import stable_id
from store.rows import ModelRow, PairRecord, PreferenceRecord, TrainMetricRow, TrainRunRow
from training.trainer import DPOParams, PreferencePair, StepMetrics, add_lora, num_steps, train_dpo


class LengthAudit(BaseModel):
    """Is 'chosen' systematically longer? DPO would learn length instead of quality."""

    n_pairs: int
    chosen_longer_share: float
    mean_chosen_tokens: float
    mean_rejected_tokens: float


class TrainOutcome(BaseModel):
    trained: bool
    reason: str
    run_id: str | None = None
    candidate_id: str | None = None
    n_pairs: int = 0
    first_loss: float | None = None
    last_loss: float | None = None


def select_preferences(records: Sequence[PairRecord], human: Mapping[str, str]) -> list[PreferenceRecord]:
    """The trustworthy preferences: a human label where one exists (a human tie drops the pair),
    else a valid judge verdict whose two orders agree on a winner."""
    selected = []
    for r in records:
        if r.pair_id in human:
            winner, source = human[r.pair_id], "human"
        elif r.verdict_status == "ok" and r.consistent:
            winner, source = r.judge_winner, "judge"
        else:
            continue
        if winner not in ("a", "b"):
            continue
        chosen, rejected = ((r.text_a, r.ids_a), (r.text_b, r.ids_b)) if winner == "a" else ((r.text_b, r.ids_b), (r.text_a, r.ids_a))
        selected.append(PreferenceRecord(pair_id=r.pair_id, prompt=r.prompt, chosen_text=chosen[0], rejected_text=rejected[0],
                                         chosen_ids=chosen[1], rejected_ids=rejected[1], source=source,
                                         confidence=1.0 if source == "human" else r.confidence,
                                         rationale="human review" if source == "human" else r.rationale))
    return selected


def build_preference_pairs(records: Sequence[PreferenceRecord], tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> list[PreferencePair]:
    """Tokenise prompts exactly as sampling did; completions keep the sampled token ids."""
    return [
        PreferencePair(pair_id=r.pair_id, prompt_ids=encode_chat(tokenizer, system_prompt, r.prompt),
                       chosen_ids=r.chosen_ids, rejected_ids=r.rejected_ids)
        for r in records
    ]


def audit_length(pairs: Sequence[PreferencePair]) -> LengthAudit:
    n = len(pairs)
    if n == 0:
        return LengthAudit(n_pairs=0, chosen_longer_share=0.0, mean_chosen_tokens=0.0, mean_rejected_tokens=0.0)
    return LengthAudit(
        n_pairs=n,
        chosen_longer_share=sum(len(p.chosen_ids) > len(p.rejected_ids) for p in pairs) / n,
        mean_chosen_tokens=sum(len(p.chosen_ids) for p in pairs) / n,
        mean_rejected_tokens=sum(len(p.rejected_ids) for p in pairs) / n,
    )


def data_hash(pairs: Sequence[PreferencePair]) -> str:
    return stable_id("dpo-data", [(p.pair_id, p.chosen_ids, p.rejected_ids) for p in pairs])


def train_candidate(
    store: Store,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    params: DPOParams,
    parent_id: str,
    round_id: str,
    round_index: int,
    artifacts_dir: Path,
    min_pairs: int,
    seed: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[TrainOutcome, PeftModel | None]:
    """Train a LoRA adapter on `policy` (if there is enough trustworthy data) and record it.

    Returns the outcome and the policy wrapped with the candidate adapter (None if not trained).
    A candidate already trained by an earlier run of this round is loaded, not retrained.
    """
    if len(pairs) < min_pairs:
        return TrainOutcome(trained=False, n_pairs=len(pairs),
                            reason=f"only {len(pairs)} trustworthy pairs (< min_pairs {min_pairs}): not training"), None
    audit = audit_length(pairs)
    dhash = data_hash(pairs)
    config = {**params.model_dump(), "seed": seed}
    run_id = stable_id("train-run", round_id, parent_id, dhash, config)
    candidate_id = stable_id("adapter", parent_id, dhash, config)
    adapter_dir = artifacts_dir / "adapters" / candidate_id

    if (adapter_dir / "adapter_config.json").is_file() and store.by_ids(ModelRow, [candidate_id]):
        model = PeftModel.from_pretrained(policy, adapter_dir)
        metrics = store.train_metrics(run_id)
        return TrainOutcome(trained=True, reason="candidate already trained in an earlier run of this round",
                            run_id=run_id, candidate_id=candidate_id, n_pairs=len(pairs),
                            first_loss=metrics[0].loss if metrics else None,
                            last_loss=metrics[-1].loss if metrics else None), model

    model = add_lora(policy, params, seed)
    total = num_steps(len(pairs), params)
    progress(0, total)
    metric_rows: list[StepMetrics] = []

    def on_step(m: StepMetrics) -> None:
        metric_rows.append(m)
        progress(m.step + 1, total)

    train_dpo(model, pairs, params, tokenizer.pad_token_id, seed, on_step)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the final directory and rename: a crash never leaves a half-written adapter.
    staging = adapter_dir.with_name(adapter_dir.name + ".partial")
    model.save_pretrained(staging)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    staging.rename(adapter_dir)

    store.append([TrainRunRow(run_id=run_id, round_id=round_id, parent_model_id=parent_id, candidate_id=candidate_id,
                              data_hash=dhash, n_pairs=len(pairs), audit_json=audit.model_dump(), config_json=config)])
    store.append([TrainMetricRow(run_id=run_id, **m.model_dump()) for m in metric_rows])
    store.append([ModelRow(model_id=candidate_id, parent_id=parent_id, kind="adapter", path=str(adapter_dir),
                           created_round=round_index, promoted=False, promotion_reason="not evaluated yet",
                           data_hash=dhash, config_json=config)])
    return TrainOutcome(trained=True, reason=f"trained on {len(pairs)} pairs", run_id=run_id, candidate_id=candidate_id,
                        n_pairs=len(pairs), first_loss=metric_rows[0].loss, last_loss=metric_rows[-1].loss), model
