"""Evaluation maths and probe files: raw and length-controlled win rates, probe sets."""

from __future__ import annotations

import numpy as np
import pytest

from evals.probes import ProbeError, load_probe_set
from evals.winrate import length_controlled_win_rate, score_of
from stats.intervals import wilson_interval


def synthetic(n: int, mean_diff: float, quality: float, length_effect: float, seed: int):
    """Scores drawn from p(win) = sigmoid(quality + length_effect * tanh(d / sd(d)))."""
    rng = np.random.default_rng(seed)
    d = rng.normal(mean_diff, 40, n)
    p = 1 / (1 + np.exp(-(quality + length_effect * np.tanh(d / d.std()))))
    return (rng.random(n) < p).astype(float), d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wins_driven_only_by_length_give_an_lc_win_rate_near_one_half(seed):
    scores, diffs = synthetic(400, mean_diff=40, quality=0.0, length_effect=3.0, seed=seed)
    raw = scores.mean()
    lc = length_controlled_win_rate(scores, diffs)
    assert raw > 0.7                          # A is longer most of the time, and longer wins
    assert abs(lc.lc_win_rate - 0.5) < 0.08   # at equal length there is nothing to prefer
    assert lc.length_coef > 2


def test_a_shorter_answer_that_wins_on_quality_has_lc_above_raw():
    scores, diffs = synthetic(400, mean_diff=-40, quality=1.0, length_effect=2.0, seed=0)
    lc = length_controlled_win_rate(scores, diffs)
    assert lc.lc_win_rate > scores.mean() + 0.1
    assert lc.lc_win_rate == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.08)  # the quality effect alone


def test_equal_lengths_give_back_the_raw_rate_shrunk_only_slightly():
    scores = [1, 1, 0, 0.5, 1, 0, 1, 1] * 10
    lc = length_controlled_win_rate(scores, [0] * len(scores))
    assert lc.length_coef == 0 and lc.lc_win_rate == pytest.approx(np.mean(scores), abs=0.01)
    one_sided = length_controlled_win_rate([1, 1, 1], [5, -3, 0])  # separable: the prior keeps it finite
    assert 0.5 < one_sided.lc_win_rate < 1 and np.isfinite(one_sided.intercept)


def test_ties_and_the_wilson_interval():
    assert [score_of(w) for w in ("a", "b", "tie", None)] == [1.0, 0.0, 0.5, 0.5]
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    low, high = wilson_interval(1.0, 3)
    assert high == 1.0 and 0.4 < low < 0.5
    assert wilson_interval(0.0, 0) == (0.0, 1.0)


def test_the_bundled_sycophancy_probe_fails_agreement_with_a_false_premise():
    probe = load_probe_set("bundled:sycophancy")
    assert len(probe.as_prompts()) == len(probe.prompts) >= 8
    assert not probe.passes("Yes, you're right, the warranty is for life.")
    assert not probe.passes("As you said, refunds are paid at the post office.")
    assert probe.passes("Our warranty covers one year from purchase; I can help you file a claim.")


@pytest.mark.parametrize("body, expected", [
    ("name: x\nprompts: [a]\n", "check: Field required"),
    ("name: x\ncheck: {max_words: 3}\nprompts: []\n", "prompts: List should have at least 1 item"),
    ("name: x\ncheck: {forbidden_patterns: ['(']}\nprompts: [a]\n", "invalid regex"),
    ("name: [\n", "not valid YAML"),
])
def test_probe_file_errors_name_the_file_and_field(tmp_path, body, expected):
    path = tmp_path / "probe.yaml"
    path.write_text(body)
    with pytest.raises(ProbeError) as info:
        load_probe_set(str(path))
    assert str(path) in str(info.value) and expected in str(info.value)
