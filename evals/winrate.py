"""Win rates of a head-to-head: raw and length-controlled, each with a bootstrap interval over prompts.

Each judged held-out pair gives one score for model A: 1 (its answer won), 0.5 (tie, or the judge's
two orders disagreed) or 0 (lost). The raw win rate is their mean.

Length-controlled win rate (the AlpacaEval 2 idea, without its per-instruction term): fit

    p_i = sigmoid(theta_0 + theta_1 * tanh(d_i / s))

where d_i = len(A_i) - len(B_i) in completion tokens and s is the standard deviation of the d_i, by
maximising the likelihood of the scores (a tie counts as half a win: soft labels), with a weak
Gaussian prior (lambda = 0.5 on both weights, about one pseudo-observation) so that the fit stays
finite when one side wins everything. The plain LC win rate is the model read off at zero length
difference: sigmoid(theta_0). A judge that only rewards length gives theta_0 near 0, i.e. an LC win
rate near 0.5, however often the longer side won.

Length is a confound only where the constitution does not ask for it. A constitution with a word
limit (a check with `max_words`) prefers the reply within the limit, and correcting that away
removes a gain the constitution asks for. So the gate's LC win rate corrects only the pairs where
length is free: a pair whose two replies fall on different sides of some word limit
("length-decided") keeps its judged score, and the length model is fit on the other pairs and read
off at zero difference for them:

    LC = (n_free * sigmoid(theta_0 fit on the free pairs) + sum of the length-decided pairs' scores) / n

With no word limit in the constitution (or no pair that one separates) this is the plain LC.

Every number comes with a bootstrap interval in which the prompt is the unit (stats/intervals.py):
a prompt's k samples are resampled together, and the length model is refit in every resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from stats.intervals import Interval, cluster_weights, percentile_interval, weighted_means

PRIOR = 0.5  # lambda: L2 weight on both coefficients


class LengthControlled(BaseModel):
    lc_win_rate: float
    intercept: float    # theta_0: the log-odds of a win at equal length
    length_coef: float  # theta_1: log-odds per unit of tanh(length difference / s)
    length_scale: float  # s, in tokens


def score_of(winner: str | None) -> float:
    """A's score for a verdict winner: a = 1, b = 0, anything else (tie, inconsistent) = 0.5."""
    return {"a": 1.0, "b": 0.0}.get(winner or "", 0.5)


def length_feature(length_diffs: np.ndarray, scale: float) -> np.ndarray:
    """tanh(d / s): the length difference squashed, so one very long reply cannot dominate the fit."""
    return np.tanh(length_diffs / scale) if scale > 0 else np.zeros_like(length_diffs, dtype=np.float64)


def fit_length_model(scores: np.ndarray, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fit the logistic length model above by Newton's method, once per row of `weights`.

    scores: (N,) in [0, 1]; x: (N,) the length feature; weights: (B, N) how often each pair counts
    (one row of ones for the plain fit, bootstrap multiplicities otherwise). Returns theta: (B, 2)."""
    features = np.stack([np.ones_like(x), x], axis=1)                      # (N, 2)
    theta = np.zeros((weights.shape[0], 2))                                # (B, 2)
    prior = PRIOR * np.eye(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(theta @ features.T)))                        # (B, N)
        grad = ((p - scores) * weights) @ features + PRIOR * theta         # (B, 2)
        curvature = p * (1 - p) * weights                                  # (B, N)
        hessian = np.einsum("bn,ni,nj->bij", curvature, features, features) + prior  # (B, 2, 2)
        step = np.linalg.solve(hessian, grad[..., None])[..., 0]           # (B, 2)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def length_controlled_win_rate(scores: Sequence[float], length_diffs: Sequence[float]) -> LengthControlled:
    """The plain LC win rate of one set of pairs (no interval)."""
    y = np.asarray(scores, dtype=np.float64)          # (n,) in [0, 1]
    d = np.asarray(length_diffs, dtype=np.float64)    # (n,) tokens, A minus B
    if len(y) == 0:
        return LengthControlled(lc_win_rate=0.5, intercept=0.0, length_coef=0.0, length_scale=0.0)
    scale = float(d.std())
    (theta,) = fit_length_model(y, length_feature(d, scale), np.ones((1, len(y))))
    return LengthControlled(lc_win_rate=float(1 / (1 + np.exp(-theta[0]))), intercept=float(theta[0]),
                            length_coef=float(theta[1]), length_scale=scale)


@dataclass(frozen=True)
class JudgedPairs:
    """An evaluation's judged pairs as arrays: one entry per (prompt, sample index) with a valid verdict."""

    prompt: np.ndarray          # (N,) int: index of the pair's prompt, 0..P-1 (the bootstrap unit)
    score: np.ndarray           # (N,) A's score: 1, 0.5 or 0
    length_diff: np.ndarray     # (N,) completion tokens, A minus B
    length_decided: np.ndarray  # (N,) bool: some word limit of the constitution separates the two replies


class WinRates(BaseModel):
    raw: Interval
    lc: Interval        # the gate's: length-controlled where length is free (module docstring)
    lc_plain: Interval  # every pair length-controlled (AlpacaEval style), shown beside it
    length_coef: float  # theta_1 of the plain fit: > 0 means the judge's winner tends to be the longer reply
    length_decided: float  # share of pairs a word limit decides (kept as judged by the gate's LC)


def win_rates(pairs: JudgedPairs, clusters: int, confidence: float, seed: int) -> WinRates:
    """Raw, gate and plain LC win rates with their bootstrap intervals (the prompt is the unit)."""
    n = len(pairs.score)
    if n == 0:
        empty = Interval(estimate=0.5, low=0.0, high=1.0, se=float("nan"), confidence=confidence)
        return WinRates(raw=empty, lc=empty, lc_plain=empty, length_coef=0.0, length_decided=0.0)
    y, free = pairs.score.astype(np.float64), ~pairs.length_decided
    x = length_feature(pairs.length_diff.astype(np.float64), float(pairs.length_diff.std()))
    # row 0: the sample itself (every prompt once); rows 1..B: the bootstrap resamples
    weights = np.concatenate([np.ones((1, clusters)), cluster_weights(clusters, seed)]).astype(np.float64)  # (1+B, P)
    per_pair = weights[:, pairs.prompt]                                               # (1+B, N)

    raw = weighted_means(y, pairs.prompt, weights)                                    # (1+B,)
    plain_theta = fit_length_model(y, x, per_pair)                                    # (1+B, 2)
    plain = 1 / (1 + np.exp(-plain_theta[:, 0]))
    if free.all():
        gate = plain
    elif not free.any():
        gate = raw
    else:
        free_theta = fit_length_model(y[free], x[free], per_pair[:, free])
        free_lc = 1 / (1 + np.exp(-free_theta[:, 0]))                                 # (1+B,)
        n_free = per_pair[:, free].sum(axis=1)
        decided_sum = per_pair[:, ~free] @ y[~free]
        gate = (n_free * free_lc + decided_sum) / per_pair.sum(axis=1)

    def interval(replicates: np.ndarray) -> Interval:
        return percentile_interval(float(replicates[0]), replicates[1:], confidence, clusters)

    return WinRates(raw=interval(raw), lc=interval(gate), lc_plain=interval(plain), length_coef=float(plain_theta[0, 1]),
                    length_decided=float((~free).mean()))


def mean_difference(values: np.ndarray, prompt: np.ndarray, clusters: int, confidence: float, seed: int) -> Interval:
    """The mean of paired differences (A minus B, one per matched sample) with its bootstrap interval."""
    if len(values) == 0:
        return Interval(estimate=0.0, low=-1.0, high=1.0, se=float("nan"), confidence=confidence)
    weights = np.concatenate([np.ones((1, clusters)), cluster_weights(clusters, seed)]).astype(np.float64)
    replicates = weighted_means(values.astype(np.float64), prompt, weights)
    return percentile_interval(float(replicates[0]), replicates[1:], confidence, clusters, bounds=(-1.0, 1.0))
