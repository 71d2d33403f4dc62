"""The report's figures (matplotlib, no display): each function takes report data and returns a
Figure whose every axes has a title and labelled axes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never a window, works without a display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from evals.report_data import RoundPoint  # noqa: E402
from store.rows import StepMetrics  # noqa: E402

NAN = float("nan")


def _value(x: float | None) -> float:
    return NAN if x is None else x


def win_rates(history: Sequence[RoundPoint]) -> Figure:
    """Raw and length-controlled win rates per round with their bootstrap intervals, and the bar the
    LC interval's lower end must clear."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, name, marker, label in ((-0.08, "win_rate", "o", "raw win rate"),
                                        (0.08, "lc_win_rate", "s", "length-controlled win rate (the gate's)")):
        points = [(p.round_index + offset, getattr(p, name)) for p in history if getattr(p, name) is not None]
        if points:
            xs, intervals = zip(*points)
            ax.errorbar(xs, [i.estimate for i in intervals], marker=marker, capsize=4, linestyle="none",
                        yerr=[[i.estimate - i.low for i in intervals], [i.high - i.estimate for i in intervals]],
                        label=f"{label}, 95% CI")
    if history and history[-1].promotion_bar is not None:
        ax.axhline(history[-1].promotion_bar, color="grey", linestyle=":", label="bar the LC interval must clear")
    ax.axhline(0.5, color="black", linewidth=0.5)
    for p in history:
        if p.promoted and p.lc_win_rate is not None:
            ax.annotate("promoted", (p.round_index, p.lc_win_rate.high), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
    ax.set(title="Candidate vs current policy on held-out prompts", xlabel="round", ylabel="win rate of the candidate",
           ylim=(0, 1))
    ax.set_xticks([p.round_index for p in history])
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def principle_pass_rates(history: Sequence[RoundPoint]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rounds = [p.round_index for p in history]
    principles = sorted({pid for p in history for pid in p.candidate_pass})
    for i, pid in enumerate(principles):
        color = f"C{i % 10}"
        ax.plot(rounds, [_value(p.candidate_pass.get(pid)) for p in history], marker="o", color=color,
                label=f"{pid}: candidate")
        ax.plot(rounds, [_value(p.baseline_pass.get(pid)) for p in history], marker="x", linestyle="--", color=color,
                label=f"{pid}: current policy")
    ax.set(title="Per-principle pass rates on held-out prompts", xlabel="round", ylabel="pass rate", ylim=(-0.02, 1.02))
    ax.set_xticks(rounds)
    if principles:
        ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def lengths(chosen: Sequence[int], rejected: Sequence[int], history: Sequence[RoundPoint]) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    top = max([*chosen, *rejected, 1])
    bins = list(range(0, top + max(1, math.ceil(top / 20)), max(1, math.ceil(top / 20))))
    left.hist([list(chosen), list(rejected)], bins=bins, label=["chosen", "rejected"], alpha=0.8)
    left.set(title=f"This round's DPO pairs: completion length ({len(chosen)} pairs)", xlabel="completion tokens",
             ylabel="completions")
    left.legend(fontsize=8)
    with_samples = [p for p in history if p.policy_lengths]
    if with_samples:
        right.boxplot([p.policy_lengths for p in with_samples], tick_labels=[str(p.round_index) for p in with_samples])
    right.set(title="Policy answer length per round (train samples)", xlabel="round", ylabel="completion tokens")
    fig.tight_layout()
    return fig


def training(steps: Sequence[StepMetrics]) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [s.step for s in steps]
    left.plot(x, [s.loss for s in steps], marker=".")
    left.axhline(math.log(2), color="grey", linestyle=":", label="log 2 (no preference yet)")
    left.set(title="DPO loss per step", xlabel="step", ylabel="loss")
    left.legend(fontsize=8)
    right.plot(x, [s.reward_margin for s in steps], marker=".", label="margin (chosen - rejected)")
    right.plot(x, [s.reward_chosen for s in steps], linestyle="--", label="chosen")
    right.plot(x, [s.reward_rejected for s in steps], linestyle="--", label="rejected")
    right.set(title="Implicit rewards per step (beta x log-ratio)", xlabel="step", ylabel="reward")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def judge_trust(history: Sequence[RoundPoint]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rounds = [p.round_index for p in history]
    ax.plot(rounds, [_value(p.position_consistency) for p in history], marker="o",
            label="position consistency (both orders agree)")
    ax.plot(rounds, [_value(p.kappa) for p in history], marker="s", label="judge-human Cohen's kappa (spot-checks)")
    ax.set(title="Can the judge be trusted?", xlabel="round", ylabel="rate / kappa", ylim=(-1.02, 1.02))
    ax.set_xticks(rounds)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
