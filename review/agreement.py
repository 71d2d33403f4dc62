"""Judge-human agreement on the spot-checked pairs (the human labels are review/labels.py's).

The judge's label is its verdict's winner when the verdict is valid and
both orders agree, else "tie" (that is how the dataset treats it). Agreement is accuracy (share of
equal labels) and Cohen's kappa, overall, per principle (that principle's vote vs the human label,
where it voted) and per prompt tag, each with its count.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from judges.stats import cohen_kappa
from review.labels import human_labels
from store.db import Store
from store.ids import stable_id
from store.rows import AgreementRow, PairRecord, utcnow


def judge_label(record: PairRecord) -> str:
    if record.verdict_status == "ok" and record.consistent and record.judge_winner in ("a", "b"):
        return record.judge_winner
    return "tie"


def measure_agreement(records: Sequence[PairRecord], labels: dict[str, str], round_id: str, judge_id: str,
                      constitution_hash: str) -> list[AgreementRow]:
    reviewed = [r for r in records if r.pair_id in labels]
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {("overall", ""): []}
    for r in reviewed:
        human = labels[r.pair_id]
        groups[("overall", "")].append((judge_label(r), human))
        for tag in r.prompt_tags:
            groups.setdefault(("tag", tag), []).append((judge_label(r), human))
        for principle, vote in r.votes_json.items():
            if vote in ("a", "b", "tie"):
                groups.setdefault(("principle", principle), []).append((vote, human))
    version = stable_id("reviews", sorted(labels.items()))
    computed_at = utcnow()  # one timestamp for the set: the store reads the latest set of a round
    rows = []
    for (scope, subject), pairs in sorted(groups.items()):
        judge_side, human_side = [p[0] for p in pairs], [p[1] for p in pairs]
        rows.append(AgreementRow(
            agreement_id=stable_id("agreement", round_id, judge_id, constitution_hash, scope, subject, version),
            round_id=round_id, judge_id=judge_id, constitution_hash=constitution_hash, scope=scope, subject=subject,
            n=len(pairs), accuracy=sum(j == h for j, h in pairs) / len(pairs) if pairs else None,
            kappa=cohen_kappa(judge_side, human_side), computed_at=computed_at))
    return rows


def round_agreement(store: Store, round_id: str, judge_id: str, constitution_hash: str) -> list[AgreementRow]:
    """A round's judge-human agreement now, from its stored verdicts and reviews (the rows are not stored)."""
    return measure_agreement(store.judged_pairs(round_id, judge_id, constitution_hash),
                             human_labels(store.reviews_of_round(round_id)), round_id, judge_id, constitution_hash)


class AgreementCheck(BaseModel):
    passed: bool
    reason: str
    n: int
    accuracy: float | None
    kappa: float | None


def check_agreement(rows: Sequence[AgreementRow], min_reviewed: int, min_kappa: float, min_accuracy: float) -> AgreementCheck:
    """The training gate: with at least `min_reviewed` reviewed pairs, kappa and accuracy must clear their bars."""
    overall = next(r for r in rows if r.scope == "overall")
    found = AgreementCheck(passed=True, reason="", n=overall.n, accuracy=overall.accuracy, kappa=overall.kappa)
    if overall.n == 0 or overall.n < min_reviewed:  # (with review.min_reviewed 0 and no reviews: nothing to check)
        found.reason = f"not checked: {overall.n} reviewed pairs (< review.min_reviewed {min_reviewed})"
        return found
    assert overall.kappa is not None and overall.accuracy is not None  # both are measured once a pair is reviewed
    measured = f"kappa {overall.kappa:.2f}, accuracy {overall.accuracy:.2f} on {overall.n} reviewed pairs"
    low = []
    if overall.kappa < min_kappa:
        low.append(f"kappa {overall.kappa:.2f} < review.min_kappa {min_kappa:.2f}")
    if overall.accuracy < min_accuracy:
        low.append(f"accuracy {overall.accuracy:.2f} < review.min_accuracy {min_accuracy:.2f}")
    if low:
        return found.model_copy(update={"passed": False, "reason": f"judge-human agreement too low ({'; '.join(low)}, "
                                                                     f"{overall.n} reviewed pairs): not training"})
    found.reason = f"ok: {measured}"
    return found
