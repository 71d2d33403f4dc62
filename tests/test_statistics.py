"""The evaluation's statistics with known answers: bootstrap coverage, the prompt as the unit, the
sequential boundaries, the constitution-aware length control, the gate's verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from evals.decision import gate_verdict, significant_losses
from evals.stage import EvalOutcome
from evals.winrate import JudgedPairs, length_controlled_win_rate, win_rates
from stats.intervals import Interval, cluster_weights, expanded_tail, percentile_interval, weighted_means
from stats.sequential import look_boundary, look_confidence, minimum_detectable, planned_looks


def prompt_level_outcomes(seed: int, prompts: int, k: int, rate: float, concentration: float = 4.0):
    """k outcomes per prompt from prompt-level win probabilities ~ Beta with mean `rate`: within a
    prompt the samples are correlated, and the known answer is the mean over prompts, `rate`."""
    rng = np.random.default_rng(seed)
    p = rng.beta(rate * concentration, (1 - rate) * concentration, prompts)         # (P,)
    y = (rng.random((prompts, k)) < p[:, None]).astype(np.float64).ravel()          # (P * k,)
    return y, np.repeat(np.arange(prompts), k)


def raw_interval(y, prompt, prompts: int, seed: int, confidence: float = 0.95) -> Interval:
    weights = np.concatenate([np.ones((1, prompts)), cluster_weights(prompts, seed, 2000)]).astype(np.float64)
    replicates = weighted_means(y, prompt, weights)
    return percentile_interval(float(replicates[0]), replicates[1:], confidence, prompts)


@pytest.mark.parametrize("prompts", [8, 30])
def test_the_prompt_bootstrap_covers_a_known_rate_at_the_stated_level(prompts):
    seeds, rate = 400, 0.6
    hits = 0
    for seed in range(seeds):
        y, prompt = prompt_level_outcomes(seed, prompts, k=4, rate=rate)
        interval = raw_interval(y, prompt, prompts, seed=10**6 + seed)
        hits += interval.low <= rate <= interval.high
    # 95% nominal; 400 seeds give a binomial sd of 1.1 points. The plain percentile interval covers
    # ~86% at 8 prompts: the expanded one is what brings it back.
    assert 0.92 <= hits / seeds <= 0.98


def test_a_prompts_k_samples_are_resampled_together():
    rng = np.random.default_rng(0)
    per_prompt = (rng.random(10) < 0.6).astype(np.float64)            # one outcome per prompt ...
    k1 = raw_interval(per_prompt, np.arange(10), 10, seed=7)
    y4 = np.repeat(per_prompt, 4)                                      # ... and the same outcome 4 times per prompt
    k4 = raw_interval(y4, np.repeat(np.arange(10), 4), 10, seed=7)
    # 4 copies of a prompt's outcome carry no more information than one: the interval must not shrink
    # (resampling the 40 pairs one by one would halve its width)
    assert (k4.low, k4.high) == pytest.approx((k1.low, k1.high))
    assert k4.high - k4.low > 0.3


def test_cluster_weights_draw_whole_prompts():
    weights = cluster_weights(6, seed=1, resamples=500)
    assert weights.shape == (500, 6) and (weights.sum(axis=1) == 6).all()
    assert weights.max() > 1 and (weights == 0).any()  # some prompts twice, some not at all


def test_the_expanded_tail_matches_its_formula():
    n, alpha = 8, 0.05
    t = scipy_stats.t.ppf(1 - alpha / 2, n - 1)
    assert expanded_tail(0.95, n) == pytest.approx(2 * scipy_stats.norm.cdf(-np.sqrt(n / (n - 1)) * t))
    assert expanded_tail(0.95, 8) < expanded_tail(0.95, 30) < alpha  # fewer prompts: wider percentiles


@pytest.mark.parametrize("looks, z", [(1, 1.959964), (2, 2.241403), (3, 2.393980), (4, 2.497705)])
def test_sequential_boundaries_match_their_formula(looks, z):
    # Bonferroni over the planned looks: each look's two-sided interval at 1 - alpha / L
    assert look_confidence(0.95, looks) == pytest.approx(1 - 0.05 / looks)
    assert look_boundary(0.95, looks) == pytest.approx(z, abs=1e-6)
    assert look_boundary(0.95, looks) == pytest.approx(scipy_stats.norm.ppf(1 - 0.05 / (2 * looks)))


def test_planned_looks_and_the_minimum_detectable_effect():
    assert [planned_looks(4, m) for m in (4, 5, 8, 12)] == [1, 2, 2, 3]
    # bar + (z_{1-alpha/2} + z_power) * se: 0.5 + (1.96 + 0.8416) * 0.05
    assert minimum_detectable(0.05, 1.959964, 0.8, 0.5) == pytest.approx(0.5 + 2.801585 * 0.05, abs=1e-5)


def test_repeated_looks_keep_the_false_promotion_rate_only_with_the_widened_intervals():
    """A/A data looked at 3 times (4, 8, 12 samples per prompt): promoting at the first look whose
    lower end clears 0.5 errs more often with 95% intervals at each look than with the sequential ones."""
    prompts, looks, seeds = 12, 3, 300
    naive = sequential = 0
    for seed in range(seeds):
        y, prompt = prompt_level_outcomes(seed, prompts, k=12, rate=0.5, concentration=2.0)
        y, prompt = y.reshape(prompts, 12), prompt.reshape(prompts, 12)
        lows_naive, lows_seq = [], []
        for look in range(1, looks + 1):
            sub_y, sub_p = y[:, : 4 * look].ravel(), prompt[:, : 4 * look].ravel()
            lows_naive.append(raw_interval(sub_y, sub_p, prompts, seed + look, 0.95).low)
            lows_seq.append(raw_interval(sub_y, sub_p, prompts, seed + look, look_confidence(0.95, looks)).low)
        naive += any(low > 0.5 for low in lows_naive)
        sequential += any(low > 0.5 for low in lows_seq)
    assert sequential / seeds <= 0.035  # the stated one-sided rate is 2.5%
    assert naive > sequential


def test_length_control_keeps_pairs_a_word_limit_decides():
    """The candidate is shorter and wins; where a word limit separates the replies the constitution
    asks for the shorter one, so those wins stay wins. The plain LC removes them."""
    rng = np.random.default_rng(0)
    prompts, k = 20, 4
    d = rng.normal(-30, 20, prompts * k)                        # A about 30 tokens shorter
    decided = d < -30                                           # ... and within the limit where B is not
    p = np.where(decided, 0.9, 1 / (1 + np.exp(-(-2.0 * np.tanh(d / d.std())))))  # free pairs: pure length bias
    y = (rng.random(prompts * k) < p).astype(np.float64)
    pairs = JudgedPairs(prompt=np.repeat(np.arange(prompts), k), score=y, length_diff=d, length_decided=decided)
    rates = win_rates(pairs, prompts, 0.95, seed=3)
    assert rates.length_decided == pytest.approx(decided.mean())
    assert rates.lc.estimate > rates.lc_plain.estimate + 0.05
    free = ~decided
    free_lc = length_controlled_win_rate(y[free], d[free]).lc_win_rate
    expected = (free.sum() * free_lc + y[decided].sum()) / len(y)
    assert rates.lc.estimate == pytest.approx(expected, abs=0.02)  # d's scale is the whole sample's there
    assert rates.lc.low <= rates.lc.estimate <= rates.lc.high


def test_without_a_word_limit_the_gate_lc_is_the_plain_lc():
    y, prompt = prompt_level_outcomes(1, 16, 4, 0.6)
    d = np.random.default_rng(1).normal(0, 25, len(y))
    rates = win_rates(JudgedPairs(prompt=prompt, score=y, length_diff=d, length_decided=np.zeros(len(y), bool)), 16, 0.95, 5)
    assert rates.lc == rates.lc_plain and rates.length_decided == 0
    plain = length_controlled_win_rate(y, d)
    assert rates.lc.estimate == pytest.approx(plain.lc_win_rate) and rates.length_coef == pytest.approx(plain.length_coef)


@pytest.mark.parametrize("low, high, vetoes, verdict", [
    (0.52, 0.70, [], "promote"),
    (0.52, 0.70, ["short"], "vetoed"),
    (0.30, 0.49, [], "worse"),
    (0.45, 0.60, [], "undecided"),
    (0.50, 0.50, [], "undecided"),  # every pair a tie: nothing to tell apart
])
def test_the_gate_reads_the_interval(low, high, vetoes, verdict):
    assert gate_verdict(Interval(estimate=(low + high) / 2, low=low, high=high), 0.0, vetoes) == verdict


def test_a_margin_raises_the_bar_and_only_significant_check_losses_veto():
    interval = Interval(estimate=0.6, low=0.53, high=0.67)
    assert gate_verdict(interval, 0.0, []) == "promote" and gate_verdict(interval, 0.05, []) == "undecided"
    differences = {"short": Interval(estimate=-0.3, low=-0.5, high=-0.1), "polite": Interval(estimate=-0.2, low=-0.4, high=0.05)}
    assert significant_losses(differences) == ["short"]


def test_rounds_evaluated_before_intervals_still_read():
    old = {"n": 8, "wins": 5, "losses": 3, "ties": 0, "win_rate": 0.62, "win_rate_low": 0.3, "win_rate_high": 0.86,
           "lc_win_rate": 0.46, "length_coef": -1.3, "consistency": 0.5,
           "candidate": {"model_id": "c", "mean_tokens": 40, "median_tokens": 38, "principle_pass": {}},
           "baseline": {"model_id": "p", "mean_tokens": 57, "median_tokens": 55, "principle_pass": {}}}
    outcome = EvalOutcome.model_validate(old)
    assert outcome.raw.estimate == 0.62 and outcome.lc.estimate == 0.46 and outcome.samples_per_prompt == 1
    assert outcome.decision.verdict == "undecided" and outcome.minimum_detectable is None


def test_the_judge_error_correction_recovers_a_known_pass_rate():
    """A judge that flags "reply x is better" with probability 0.8 where people say so and 0.2 where
    they do not (one flag: that reply; none or both: a tie). On an evaluation where people would find
    the candidate worse on 35% of the pairs, the judge's own count says otherwise; corrected with the
    rates it shows on labelled pairs, the candidate's pass rate comes back to ~65%, inside the interval."""
    from evals.corrected import corrected_pass_rates

    rng = np.random.default_rng(0)
    labels = ["a", "b", "tie"]

    def judge_sees(truth: str) -> str:
        picked = [x for x in ("a", "b") if rng.random() < (0.8 if truth == x else 0.2)]
        return picked[0] if len(picked) == 1 else "tie"

    people = list(rng.choice(labels, size=4000, p=[0.35, 0.35, 0.3]))                  # labelled pairs
    judge = [judge_sees(t) for t in people]
    prompts, k = 300, 4
    truth = rng.choice(labels, size=prompts * k, p=[0.35, 0.35, 0.3])                  # the evaluation: a = the candidate
    votes = [(i // k, judge_sees(t)) for i, t in enumerate(truth)]
    observed_pass = np.mean([v != "b" for _, v in votes])
    true_pass = np.mean(truth != "b")
    corrected = corrected_pass_rates(votes, judge, people, prompts, seed=1)["candidate"]
    assert abs(observed_pass - true_pass) > 0.05                                     # the judge alone is off ...
    assert corrected.estimate == pytest.approx(true_pass, abs=0.04)                  # ... corrected, it is not
    assert corrected.low < true_pass < corrected.high
