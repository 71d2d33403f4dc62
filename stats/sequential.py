"""Error rates that hold when an evaluation looks at its data more than once.

An evaluation that stops as soon as its interval clears the bar, and otherwise draws more samples
and looks again, gets more chances to err: with a 95% interval at each of 3 looks, an A/A test
(the policy against itself) would be "promoted" up to ~7% of the time instead of 2.5%. A group
sequential design fixes the number of looks in advance and widens each look's interval so that all
looks together keep the stated rate.

We split the error rate evenly over the planned looks (Bonferroni): look j of L uses a
two-sided interval at confidence 1 - alpha / L, i.e. a z boundary of Phi^-1(1 - alpha / (2L)).
This is conservative whatever the correlation between looks (successive looks share most of their
data, so they are strongly correlated, and the union bound then errs on the safe side), needs no
assumption about how information grows with more samples per prompt, and reads in one line.
(Pocock's constant boundary would be narrower, 2.29 instead of 2.39 at L = 3 and alpha = 0.05, but
assumes independent increments, which samples added to the same prompts are not.)
"""

from __future__ import annotations

import math

from scipy import stats as scipy_stats


def planned_looks(samples_per_look: int, max_samples: int) -> int:
    """Looks of a sequential evaluation that adds `samples_per_look` samples per prompt each time, up to `max_samples`."""
    return max(1, math.ceil(max_samples / samples_per_look))


def look_confidence(confidence: float, looks: int) -> float:
    """The two-sided confidence of each look's interval so that `looks` looks together err at most 1 - confidence."""
    return 1 - (1 - confidence) / looks


def look_boundary(confidence: float, looks: int) -> float:
    """The z boundary of every look: Phi^-1(1 - alpha / (2 * looks))."""
    return float(scipy_stats.norm.ppf(1 - (1 - confidence) / (2 * looks)))


def minimum_detectable(se: float, critical: float, power: float, bar: float) -> float:
    """The smallest true rate an evaluation with standard error `se` clears `bar` for with probability
    `power`: bar + (critical + z_power) * se (the usual normal-approximation power formula)."""
    return bar + (critical + float(scipy_stats.norm.ppf(power))) * se
