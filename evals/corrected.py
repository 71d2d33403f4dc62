"""Pass rates of judged principles corrected for the judge's measured errors.

A judged principle's pass rate counts the pairs where the judge's vote did not go to the other
model, so it inherits the judge's errors: a judge that picks a side on pairs people call a tie
makes both models fail more often than they do. With the judge's sensitivity and false positive
rate for "the other reply is better on this principle", measured against people on labelled pairs
(stats/agreement.py), the standard correction for an imperfect classifier estimates the rate people
would have found. Its interval resamples both the evaluation's prompts and the labelled pairs, so it
is as wide as both sources of uncertainty make it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stats.agreement import LABELS, corrected_rate, detection_rates
from stats.intervals import Interval, cluster_weights, percentile_interval, weighted_means


def corrected_pass_rates(votes: Sequence[tuple[int, str]], judge_labels: Sequence[str], people_labels: Sequence[str],
                         clusters: int, seed: int, confidence: float = 0.95) -> dict[str, Interval] | None:
    """{"candidate": ..., "baseline": ...}: each side's corrected pass rate on one principle.

    votes: (prompt index, the judge's combined vote) per evaluation pair, a = the candidate; the
    labelled pairs: the judge's votes and people's labels on the same principle. None where nothing
    can be corrected (no votes, no labels)."""
    if not votes or not judge_labels:
        return None
    prompt = np.array([p for p, _ in votes])                                        # (N,)
    eval_weights = np.concatenate([np.ones((1, clusters)), cluster_weights(clusters, seed)]).astype(np.float64)   # (1+B, P)
    n = len(judge_labels)
    label_weights = np.concatenate([np.ones((1, n)), cluster_weights(n, seed + 1)]).astype(np.float64)         # (1+B, n)
    sensitivity, false_positive = detection_rates(np.array([LABELS.index(x) for x in judge_labels]),
                                                  np.array([LABELS.index(x) for x in people_labels]), label_weights)
    out = {}
    for side, other in (("candidate", "b"), ("baseline", "a")):
        fails = np.array([vote == other for _, vote in votes], dtype=np.float64)     # the judge says the other is better
        observed = weighted_means(fails, prompt, eval_weights)                       # (1+B,)
        passed = 1 - corrected_rate(observed, sensitivity, false_positive)
        if np.isnan(passed[0]):  # the judge flags it no more often where it holds than where it does not
            return None
        out[side] = percentile_interval(float(passed[0]), passed[1:], confidence, min(clusters, n))
    return out
