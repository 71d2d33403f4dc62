"""Win rates of a head-to-head: raw (with a Wilson interval) and length-controlled.

Each held-out prompt gives one score for model A: 1 (its answer won), 0.5 (tie, or the judge's two
orders disagreed) or 0 (lost). The raw win rate is their mean.

Length-controlled win rate (the AlpacaEval 2 idea, without its per-instruction term): fit

    p_i = sigmoid(theta_0 + theta_1 * tanh(d_i / s))

where d_i = len(A_i) - len(B_i) in completion tokens and s is the standard deviation of the d_i, by
maximising the likelihood of the scores (a tie counts as half a win: soft labels), with a weak
Gaussian prior (lambda = 0.5 on both weights, about one pseudo-observation) so that the fit stays
finite when one side wins everything. The LC win rate is the model read off at zero length
difference: sigmoid(theta_0). A judge that only rewards length gives theta_0 near 0, i.e. an LC win
rate near 0.5, however often the longer side won.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

PRIOR = 0.5  # lambda: L2 weight on both coefficients


class LengthControlled(BaseModel):
    lc_win_rate: float
    intercept: float    # theta_0: the log-odds of a win at equal length
    length_coef: float  # theta_1: log-odds per unit of tanh(length difference / s)
    length_scale: float  # s, in tokens


def score_of(winner: str | None) -> float:
    """A's score for a verdict winner: a = 1, b = 0, anything else (tie, inconsistent) = 0.5."""
    return {"a": 1.0, "b": 0.0}.get(winner or "", 0.5)


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a win rate over n prompts (ties as half a win: slightly wide)."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def length_controlled_win_rate(scores: Sequence[float], length_diffs: Sequence[float]) -> LengthControlled:
    """Fit the logistic length model above by Newton's method and read it off at zero difference."""
    y = np.asarray(scores, dtype=np.float64)          # (n,) in [0, 1]
    d = np.asarray(length_diffs, dtype=np.float64)    # (n,) tokens, A minus B
    if len(y) == 0:
        return LengthControlled(lc_win_rate=0.5, intercept=0.0, length_coef=0.0, length_scale=0.0)
    scale = float(d.std())
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)   # (n,) in (-1, 1)
    features = np.stack([np.ones_like(x), x], axis=1)           # (n, 2)
    theta = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(features @ theta)))                # (n,)
        grad = features.T @ (p - y) + PRIOR * theta               # (2,)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + PRIOR * np.eye(2)  # (2, 2)
        step = np.linalg.solve(hessian, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return LengthControlled(lc_win_rate=float(1 / (1 + np.exp(-theta[0]))), intercept=float(theta[0]),
                            length_coef=float(theta[1]), length_scale=scale)
