"""A round's training data: the trustworthy preferences (human labels first), earlier rounds' if
asked, tokenised as sampled; then the data policy (minimum pairs, the length confound)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedTokenizerBase

from lm.loading import encode_chat
from review.labels import human_labels
from store.db import Store
from store.rows import PairRecord, PreferenceRecord, RoundRow
from training.audit import AuditedPair, ConfoundAudit, audit, balance_length
from training.pairs import PreferencePair


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


class DataRefusal(BaseModel):
    """Why a round's data may not be trained on, with the audit that says so."""

    reason: str
    n_pairs: int
    audit: ConfoundAudit
    audit_trained: ConfoundAudit | None = None


def select_preferences(records: Sequence[PairRecord], human: Mapping[str, str]) -> list[PreferenceRecord]:
    """The trustworthy preferences: a human label where one exists (a human tie drops the pair),
    else a valid judge verdict whose two orders agree on a winner."""
    selected, seen = [], set()
    for r in records:
        winner: str | None
        source: Literal["judge", "human"]
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
                                         rationale="human review" if source == "human" else r.rationale,
                                         chosen_side="a" if winner == "a" else "b"))
    return selected


def round_preferences(store: Store, round_id: str, judge_id: str, constitution_hash: str) -> list[PreferenceRecord]:
    """A round's trustworthy preferences, with its human reviews applied."""
    return select_preferences(store.judged_pairs(round_id, judge_id, constitution_hash),
                              human_labels(store.reviews_of_round(round_id)))


def earlier_preferences(store: Store, round_index: int, n_rounds: int) -> list[PreferenceRecord]:
    """Trustworthy preferences of the `n_rounds` finished rounds before `round_index` (recorded by pair id).

    Their completions were sampled by older policies, so their recorded log-probs are not this
    round's reference: they are dropped, and the trainer recomputes the reference. Collections
    (`rlaif collect`) are not mixed in: their replies may come from other models and prompts.
    """
    finished = [(r, r.judge_id) for r in store.rounds()
                if r.round_index < round_index and r.status == "finished" and r.judge_id and r.kind == "round"]
    records = []
    for rnd, judge_id in finished[-n_rounds:] if n_rounds else []:
        for r in round_preferences(store, rnd.round_id, judge_id, rnd.constitution_hash):
            records.append(r.model_copy(update={"chosen_logp": None, "rejected_logp": None}))
    return records


def round_training_data(store: Store, rnd: RoundRow, judge_id: str, mix_rounds: int, tokenizer: PreTrainedTokenizerBase,
                        system_prompt: str) -> list[AuditedPair]:
    """What a round trains on, before the data policy: its trustworthy preferences and those of
    `mix_rounds` earlier rounds, tokenised. The round flow and `rlaif train` both use this."""
    records = (round_preferences(store, rnd.round_id, judge_id, rnd.constitution_hash)
               + earlier_preferences(store, rnd.round_index, mix_rounds))
    return build_preference_pairs(records, tokenizer, system_prompt)


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


def prepare_data(audited: Sequence[AuditedPair], data: DataPolicy) -> tuple[list[AuditedPair], DataRefusal | None]:
    """Audit the trustworthy pairs and apply the data policy: (pairs to train, or a refusal)."""
    before = audit(audited)
    if len(audited) < data.min_pairs:
        return [], DataRefusal(n_pairs=len(audited), audit=before,
                               reason=f"only {len(audited)} trustworthy pairs (< min_pairs {data.min_pairs}): not training")
    low, high = data.length_band
    share = before.chosen_longer_share
    if data.confounds == "off" or share is None or low <= share <= high:
        return list(audited), None
    out_of_band = (f"chosen is longer in {share:.0%} of the pairs that differ in length (band {low:.0%}-{high:.0%}, "
                   f"mean log length ratio {before.mean_log_length_ratio:+.2f})")
    if data.confounds == "refuse":
        return [], DataRefusal(n_pairs=len(audited), audit=before,
                               reason=f"length confound: {out_of_band}: not training (training.confounds is refuse)")
    kept = balance_length(audited, low, high)
    if len(kept) < data.min_pairs:
        return [], DataRefusal(n_pairs=len(kept), audit=before, audit_trained=audit(kept),
                               reason=f"length confound: {out_of_band}; balancing leaves {len(kept)} pairs "
                                       f"(< min_pairs {data.min_pairs}): not training")
    return kept, None


