"""Judge-human agreement on the spot-checked pairs (the human labels are review/labels.py's).

The judge's label is its verdict's winner when the verdict is valid and both orders agree, else
"tie" (that is how the dataset treats it). Agreement (stats/agreement.py: accuracy, Cohen's kappa
with its interval, the judge's true and false positive rates) is measured overall and per prompt
tag against people's overall labels, and per principle against what people said about that
principle (that principle's vote, where it voted), each with its count.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from review.labels import human_labels, principle_labels
from stats.agreement import LabelAgreement, label_agreement
from store.db import Store
from store.ids import stable_id, stable_int
from store.rows import AgreementRow, PairRecord, utcnow


def judge_label(record: PairRecord) -> str:
    if record.verdict_status == "ok" and record.consistent and record.judge_winner in ("a", "b"):
        return record.judge_winner
    return "tie"


def measure_agreement(records: Sequence[PairRecord], labels: dict[str, str], by_principle: dict[tuple[str, str], str],
                      round_id: str, judge_id: str, constitution_hash: str) -> list[AgreementRow]:
    """`labels`: pair -> people's overall label; `by_principle`: (pair, principle) -> people's label on it."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {("overall", ""): []}
    for r in records:
        human = labels.get(r.pair_id)
        if human is not None:
            groups[("overall", "")].append((judge_label(r), human))
            for tag in r.prompt_tags:
                groups.setdefault(("tag", tag), []).append((judge_label(r), human))
        for principle, vote in r.votes_json.items():
            said = by_principle.get((r.pair_id, principle))
            if said is not None and vote in ("a", "b", "tie"):
                groups.setdefault(("principle", principle), []).append((vote, said))
    version = stable_id("reviews", sorted(labels.items()), sorted(by_principle.items()))
    computed_at = utcnow()  # one timestamp for the set: the store reads the latest set of a round
    rows = []
    for (scope, subject), pairs in sorted(groups.items()):
        found = label_agreement([p[0] for p in pairs], [p[1] for p in pairs], seed=stable_int("agreement", scope, subject))
        rows.append(AgreementRow(
            agreement_id=stable_id("agreement", round_id, judge_id, constitution_hash, scope, subject, version),
            round_id=round_id, judge_id=judge_id, constitution_hash=constitution_hash, scope=scope, subject=subject,
            computed_at=computed_at, **found.model_dump()))
    return rows


def round_agreement(store: Store, round_id: str, judge_id: str, constitution_hash: str) -> list[AgreementRow]:
    """A round's judge-human agreement now, from its stored verdicts and reviews (the rows are not stored)."""
    reviews = store.reviews_of_round(round_id)
    return measure_agreement(store.judged_pairs(round_id, judge_id, constitution_hash), human_labels(reviews),
                             principle_labels(reviews), round_id, judge_id, constitution_hash)


def labelled_votes(store: Store, judge_id: str, constitution_hash: str, exclude: frozenset[str] = frozenset()
                   ) -> dict[str, tuple[list[str], list[str]]]:
    """Per principle, (the judge's votes, people's labels) on every pair it judged that people labelled
    on that principle (spot-checks of any round, imported labels, gold sets), except the pairs in
    `exclude` (those the judge was taught with)."""
    said = {key: label for key, label in principle_labels(store.principle_reviews()).items() if key[0] not in exclude}
    verdicts = store.verdicts({pair_id for pair_id, _ in said}, judge_id, constitution_hash)
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for (pair_id, principle), label in sorted(said.items()):
        verdict = verdicts.get(pair_id)
        vote = verdict.votes_json.get(principle) if verdict is not None and verdict.status == "ok" else None
        if vote in ("a", "b", "tie"):
            judge_side, people_side = groups.setdefault(principle, ([], []))
            judge_side.append(vote)
            people_side.append(label)
    return groups


def agreement_with_people(store: Store, judge_id: str, constitution_hash: str,
                          exclude: frozenset[str] = frozenset()) -> dict[str, LabelAgreement]:
    """Per principle, the judge's agreement with what people said about that principle (`labelled_votes`)."""
    return {principle: label_agreement(j, p, seed=stable_int("people", principle))
            for principle, (j, p) in labelled_votes(store, judge_id, constitution_hash, exclude).items()}


def labels_side_by_side(store: Store, judge_id: str, constitution_hash: str, exclude: frozenset[str] = frozenset()
                        ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the judge's principle votes, people's principle labels) per labelled pair the judge judged:
    what `judges.stats.co_decisions` compares."""
    said: dict[str, dict[str, str]] = {}
    for (pair_id, principle), label in principle_labels(store.principle_reviews()).items():
        if pair_id not in exclude:
            said.setdefault(pair_id, {})[principle] = label
    verdicts = store.verdicts(said, judge_id, constitution_hash)
    pairs = sorted(pid for pid, v in verdicts.items() if v.status == "ok")
    return [dict(verdicts[pid].votes_json) for pid in pairs], [said[pid] for pid in pairs]


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
