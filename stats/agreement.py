"""Agreement between two labellers of the same pairs (a judge and people, or two judges), each label
"a", "b" or "tie": accuracy, Cohen's kappa with a bootstrap interval over pairs, the judge's error
rates against people, and rates measured by the judge corrected for those errors.

- true positive rate: of the pairs people call different (a or b), the share the judge decides the
  same way;
- false positive rate: of the pairs people call a tie, the share the judge decides anyway (a judge
  that is "confident on noise" has a high one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from stats.intervals import cluster_weights, percentile_interval

LABELS = ("a", "b", "tie")


class LabelAgreement(BaseModel):
    n: int
    accuracy: float | None
    kappa: float | None
    kappa_low: float | None = None   # 95% interval, bootstrap over pairs
    kappa_high: float | None = None
    true_positive_rate: float | None = None
    false_positive_rate: float | None = None


def cohen_kappa(left: Sequence[str], right: Sequence[str]) -> float | None:
    """Cohen's kappa: agreement corrected for the agreement expected by chance from each side's label rates."""
    assert len(left) == len(right)
    n = len(left)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(left, right)) / n
    left_rates, right_rates = Counter(left), Counter(right)
    expected = sum(left_rates[label] * right_rates[label] for label in left_rates) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def _kappa_replicates(judge: np.ndarray, people: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kappa in every row of `weights` (B, n): how often each pair counts in that resample."""
    total = weights.sum(axis=1)                                                     # (B,)
    observed = (weights * (judge == people)).sum(axis=1) / total
    expected = np.zeros(len(weights))
    for label in range(len(LABELS)):
        expected += ((weights * (judge == label)).sum(axis=1) / total) * ((weights * (people == label)).sum(axis=1) / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)


def label_agreement(judge: Sequence[str], people: Sequence[str], seed: int = 0) -> LabelAgreement:
    """How well the judge's labels match people's on the same pairs."""
    assert len(judge) == len(people)
    n = len(judge)
    if n == 0:
        return LabelAgreement(n=0, accuracy=None, kappa=None)
    kappa = cohen_kappa(judge, people)
    j = np.array([LABELS.index(x) for x in judge])
    p = np.array([LABELS.index(x) for x in people])
    low = high = None
    if n >= 2:
        replicates = _kappa_replicates(j, p, cluster_weights(n, seed, resamples=2000).astype(np.float64))
        interval = percentile_interval(kappa or 0.0, replicates, 0.95, n, bounds=(-1.0, 1.0))
        low, high = interval.low, interval.high
    differ = [(x, y) for x, y in zip(judge, people) if y != "tie"]
    same = [x for x, y in zip(judge, people) if y == "tie"]
    return LabelAgreement(
        n=n, accuracy=float((j == p).mean()), kappa=kappa, kappa_low=low, kappa_high=high,
        true_positive_rate=sum(x == y for x, y in differ) / len(differ) if differ else None,
        false_positive_rate=sum(x != "tie" for x in same) / len(same) if same else None)


def detection_rates(judge: np.ndarray, people: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the event "reply x is the better one" (x = a or b, both counted): the judge's sensitivity
    P(judge picks x | people pick x) and false positive rate P(judge picks x | people do not), in every
    row of `weights` (B, n). judge, people: (n,) label indices (LABELS)."""
    a, b, tie = range(len(LABELS))
    hit = ((people != tie) & (judge == people)).astype(np.float64)                  # (n,)
    positives = (people != tie).astype(np.float64)                                  # one chance per decided pair
    # a people-tie gives two chances (x = a and x = b), a decided pair one (the reply people did not pick)
    false = np.where(people == tie, (judge != tie), (judge != tie) & (judge != people)).astype(np.float64)
    negatives = np.where(people == tie, 2.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ hit) / (weights @ positives), (weights @ false) / (weights @ negatives)


def corrected_rate(observed: np.ndarray, sensitivity: np.ndarray, false_positive: np.ndarray) -> np.ndarray:
    """The standard correction for an imperfect classifier (Rogan and Gladen): a judge that flags an
    event with this sensitivity and false positive rate, and flags it on `observed` of the items,
    implies a true rate of (observed - fpr) / (sensitivity - fpr), clipped to [0, 1]; undefined (nan)
    when the judge flags it no more often where it holds than where it does not."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (observed - false_positive) / (sensitivity - false_positive)
    return np.where(sensitivity > false_positive, np.clip(rate, 0.0, 1.0), np.nan)
