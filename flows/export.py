"""What `rlaif export` reads from the store for one round: its trustworthy pairs (human labels
applied), each pair's provenance (the judge's votes per principle, people's labels) and the facts
of the dataset card (the constitution, the judge's gate, its agreement with people, the filters).
training/export.py shapes and writes them; this module only gathers."""

from __future__ import annotations

from pydantic import BaseModel

from constitution.loader import Constitution, ConstitutionError, load_constitution
from flows.config import RoundConfig
from judges.qualification import QualificationGate, QualificationResult
from review.agreement import AgreementCheck, round_agreement
from store.db import Store
from store.rows import PreferenceRecord, RoundRow
from training.data import round_preferences
from training.export import CardFacts, HumanLabel, JudgeVote, PairProvenance, PrincipleTrust, trl_rows


class RoundDataset(BaseModel):
    """A round's export: the rows every format writes, and (for a datasets folder) its card's facts."""

    rows: list[dict]
    n_pairs: int
    n_human: int
    card: CardFacts


def round_dataset(store: Store, rnd: RoundRow, judge_id: str, provenance: bool) -> RoundDataset:
    """The round's trustworthy pairs as export rows (with the provenance columns if asked), and the card's facts."""
    config = RoundConfig.model_validate(rnd.config_json)
    records = round_preferences(store, rnd.round_id, judge_id, rnd.constitution_hash)
    evidence = pair_provenance(store, rnd, judge_id, records) if provenance else None
    rows = trl_rows(records, config.system_prompt(), rnd.round_index, evidence)
    n_human = sum(r.source == "human" for r in records)
    return RoundDataset(rows=rows, n_pairs=len(records), n_human=n_human,
                        card=card_facts(store, rnd, judge_id, config, len(records), n_human, provenance))


def pair_provenance(store: Store, rnd: RoundRow, judge_id: str, records: list[PreferenceRecord]) -> dict[str, PairProvenance]:
    """pair id -> the judge's combined vote per principle (and whether it counted) and every non-skip
    label people gave the pair in this round's review queue (the labels the export applied)."""
    verdicts = store.verdicts([r.pair_id for r in records], judge_id, rnd.constitution_hash)
    labels: dict[str, list[HumanLabel]] = {}
    for review in store.reviews_of_round(rnd.round_id):
        if review.winner != "skip":
            labels.setdefault(review.pair_id, []).append(
                HumanLabel(reviewer=review.reviewer, winner=review.winner, principle=review.principle))
    found = {}
    for r in records:
        verdict = verdicts.get(r.pair_id)
        votes = [] if verdict is None else [
            JudgeVote(principle=pid, vote=vote, counted=pid not in verdict.uncounted)
            for pid, vote in sorted(verdict.votes_json.items())]
        found[r.pair_id] = PairProvenance(judge_votes=votes, human_labels=labels.get(r.pair_id, []))
    return found


def round_constitution(config: RoundConfig, constitution_hash: str) -> Constitution | None:
    """The round's constitution as its config names it, if the file still has the round's content hash."""
    try:
        found = load_constitution(config.constitution)
    except ConstitutionError:
        return None
    return found if found.content_hash == constitution_hash else None


def card_facts(store: Store, rnd: RoundRow, judge_id: str, config: RoundConfig, n_pairs: int, n_human: int,
               provenance: bool) -> CardFacts:
    constitution = round_constitution(config, rnd.constitution_hash)
    qualify = store.stage_run(rnd.round_id, "qualify")
    gate = QualificationGate.model_validate(qualify.outcome_json) if qualify is not None else None
    result = None
    if qualify is not None:  # the judge's synthetic qualification the round's gate could use: the newest before it
        result = next((QualificationResult.model_validate(q.result_json) for q in store.qualifications()
                       if q.judge_id == judge_id and q.constitution_hash == rnd.constitution_hash and q.split == "qualify"
                       and q.created_at <= qualify.finished_at), None)
    recorded = (rnd.summary_json or {}).get("agreement")
    return CardFacts(
        round_index=rnd.round_index, round_id=rnd.round_id, round_status=rnd.status, constitution=config.constitution,
        constitution_name=constitution.name if constitution else None, constitution_hash=rnd.constitution_hash,
        judge_id=judge_id, trust=principle_trust(gate, result, constitution) if gate is not None else None,
        taught=[f"{t.principle} (pair {t.pair_id})" for t in gate.taught] if gate is not None else [],
        agreement=round_agreement(store, rnd.round_id, judge_id, rnd.constitution_hash),
        training_gate=AgreementCheck.model_validate(recorded).reason if recorded else None,
        tie_margin=config.judge.tie_margin, data_policy=config.training.data_policy(),
        pair_weighting=config.training.pair_weighting, n_pairs=n_pairs, n_human=n_human, provenance=provenance)


def principle_trust(gate: QualificationGate, result: QualificationResult | None,
                    constitution: Constitution | None) -> list[PrincipleTrust]:
    """Per principle: did the judge's votes count, and on what evidence (agreement with people, the
    synthetic qualification's sensitivity, or an executable check)."""
    if constitution is not None:
        principles = [(p.id, p.judged) for p in constitution.principles]
    else:  # the file changed since the round: what the gate recorded
        principles = [(pid, True) for pid in [*gate.qualified, *gate.unqualified]]
    trust = []
    for pid, judged in principles:
        if not judged:
            trust.append(PrincipleTrust(principle=pid, counted=True, why="an executable check: always counts"))
        elif pid in gate.unqualified:
            trust.append(PrincipleTrust(principle=pid, counted=False, why=gate.unqualified[pid]))
        else:
            evidence = [f"agreement with people: {gate.people[pid]}"] if pid in gate.people else []
            found = result.principles.get(pid) if result is not None else None
            if found is not None:
                evidence.append(f"qualification: sensitivity {found.sensitivity:.0%} (95% CI {found.sensitivity_low:.0%} "
                                f"to {found.sensitivity_high:.0%}) on {found.n} known-answer pairs from {found.texts} "
                                "violation texts")
            trust.append(PrincipleTrust(principle=pid, counted=pid in gate.qualified, why="; ".join(evidence)
                                        or "counted unchecked (qualification off, no labels from people)"))
    return trust
