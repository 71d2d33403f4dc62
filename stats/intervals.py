"""Confidence intervals: Wilson for a proportion, and the cluster bootstrap for anything measured on
many samples of a few units.

The evaluation answers each held-out prompt k times per side, and those k samples are not
independent (a prompt the candidate is good at gives it k wins). So the prompt is the unit: a
bootstrap resample draws prompts with replacement and takes every sample of a drawn prompt along.
`cluster_weights` gives each resample as the number of times each prompt was drawn; a statistic
computed with those weights is one bootstrap replicate.

With few prompts the plain percentile bootstrap is too narrow (it estimates the spread with n, not
n - 1, and uses normal tails where a t would be honest). `percentile_interval` therefore uses
Hesterberg's expanded percentile interval: the percentiles are taken at the level a t interval
with n - 1 degrees of freedom would need, which brings coverage back to the stated level from
n = 5 prompts on (tests/test_statistics.py measures it).
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy import stats as scipy_stats

RESAMPLES = 4000  # bootstrap resamples: the 0.3% tails of a small evaluation still hold ~10 replicates


class Interval(BaseModel):
    """A point estimate with its two-sided interval at `confidence`, and the bootstrap standard error."""

    estimate: float
    low: float
    high: float
    se: float = 0.0
    confidence: float = 0.95


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion over n independent trials."""
    if n == 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_weights(clusters: int, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """(resamples, clusters): how often each cluster (prompt) is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, clusters, size=(resamples, clusters))                  # (B, n) cluster indices
    offsets = clusters * np.arange(resamples)[:, None]                             # (B, 1)
    return np.bincount((drawn + offsets).ravel(), minlength=resamples * clusters).reshape(resamples, clusters)


def expanded_tail(confidence: float, clusters: int) -> float:
    """The two-sided tail mass at which to read the bootstrap percentiles for a `confidence` interval
    over `clusters` units (Hesterberg 2015): alpha' = 2 * Phi(-sqrt(n / (n - 1)) * t_{1 - alpha/2, n - 1})."""
    alpha = 1 - confidence
    if clusters < 2:
        return alpha
    t = scipy_stats.t.ppf(1 - alpha / 2, clusters - 1)
    return float(2 * scipy_stats.norm.cdf(-math.sqrt(clusters / (clusters - 1)) * t))


def critical_z(confidence: float, clusters: int) -> float:
    """The normal quantile an interval of `confidence` over `clusters` units spans on each side."""
    return float(scipy_stats.norm.ppf(1 - expanded_tail(confidence, clusters) / 2))


def percentile_interval(estimate: float, replicates: np.ndarray, confidence: float, clusters: int,
                        bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """The expanded percentile interval from bootstrap `replicates` of a statistic over `clusters` units.
    With fewer than two units nothing is known: the interval is the statistic's whole range, `bounds`."""
    finite = replicates[np.isfinite(replicates)]
    if clusters < 2 or len(finite) == 0:
        return Interval(estimate=estimate, low=bounds[0], high=bounds[1], se=float("nan"), confidence=confidence)
    tail = expanded_tail(confidence, clusters)
    low, high = np.quantile(finite, [tail / 2, 1 - tail / 2])
    return Interval(estimate=estimate, low=float(low), high=float(high), se=float(finite.std(ddof=1)), confidence=confidence)


def weighted_means(values: np.ndarray, cluster_of: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) the mean of `values` (one per sample) in each resample: a sample counts as often as its cluster was drawn.

    values: (N,) per sample; cluster_of: (N,) cluster index of each sample; weights: (B, n_clusters)."""
    per_sample = weights[:, cluster_of]                                            # (B, N)
    totals = per_sample.sum(axis=1)                                                # (B,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (per_sample @ values) / totals
