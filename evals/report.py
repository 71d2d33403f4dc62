"""A round's report: a self-contained HTML page (PNG plots inlined) or Markdown for terminals and CI logs."""

from __future__ import annotations

import base64

from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure

from evals import plots
from evals.report_data import Report
from evals.stage import EvalOutcome
from stats.intervals import Interval


def figures(report: Report) -> list[tuple[str, Figure | str]]:
    """(caption, matplotlib Figure) for every plot of the report, in page order; where there is
    nothing to plot, (caption, one line saying why) instead of empty axes."""
    evaluated = any(p.win_rate is not None for p in report.history)
    not_evaluated = ("No round has been evaluated yet (a round evaluates a candidate only if it trained one): "
                     "nothing to plot.")
    has_lengths = bool(report.chosen_lengths) or any(p.policy_lengths for p in report.history)
    judged = any(p.position_consistency is not None or p.kappa is not None for p in report.history)
    return [
        ("Win rate and length-controlled win rate of each round's candidate against the policy it would replace.",
         plots.win_rates(report.history) if evaluated else not_evaluated),
        ("Per-principle pass rates of the candidate (solid) and the current policy (dashed), per round.",
         plots.principle_pass_rates(report.history) if evaluated else not_evaluated),
        ("Left: length of chosen vs rejected completions in this round's trustworthy pairs. "
         "Right: length of the policy's answers over rounds.",
         plots.lengths(report.chosen_lengths, report.rejected_lengths, report.history) if has_lengths
         else "No samples and no trustworthy pairs yet: nothing to plot."),
        ("DPO loss and implicit rewards per training step of this round's candidate.",
         plots.training(report.steps) if report.steps else f"Round {report.round_index} trained nothing: {report.decision}"),
        ("Judge trust over rounds: position consistency and judge-human agreement on spot-checked pairs.",
         plots.judge_trust(report.history) if judged else "No pair has been judged in both orders yet: nothing to plot."),
    ]


def render_html(report: Report) -> str:
    """The page; a plot is (caption, base64 PNG, None), or (caption, None, why) where there is nothing to plot."""
    images = [(caption, base64.b64encode(plots.png(fig)).decode(), None) if isinstance(fig, Figure) else (caption, None, fig)
              for caption, fig in figures(report)]
    env = Environment(loader=PackageLoader("evals", "templates"), autoescape=select_autoescape(["html"]))
    return env.get_template("report.html").render(r=report, images=images, fmt=_fmt, ci=_ci, diff=_diff,
                                                  length_control_note=length_control_note, trust_note=trust_note,
                                                  pct_ci=_pct_ci, why=decision_explained(report))


def render_markdown(report: Report) -> str:
    lines = [f"# rlaif round {report.round_index} ({report.status})", "", f"**Decision:** {report.decision}", ""]
    why = decision_explained(report)
    if why:
        lines += [f"**In one sentence:** {why}", ""]
    ev = report.eval
    if ev is not None:
        lines += [f"## Candidate vs current policy ({ev.prompts} held-out prompts x {ev.samples_per_prompt} samples, "
                  "judged in both orders)", "",
                  f"**Gate:** {ev.decision.verdict}. {length_control_note(ev)}", "",
                  "| metric | candidate | current policy |", "|---|---|---|",
                  f"| win rate (95% CI) | {_ci(ev.raw)}, W/L/T {ev.wins}/{ev.losses}/{ev.ties} of {ev.n} pairs | |",
                  f"| length-controlled win rate, the gate's | {_ci(ev.lc)} | |",
                  f"| length-controlled, every pair corrected | {_ci(ev.lc_plain)} (length coef {ev.length_coef:+.2f}) | |",
                  f"| smallest true LC win rate this evaluation promotes (80% power) | {_fmt(ev.minimum_detectable)} | |",
                  f"| mean / median tokens | {ev.candidate.mean_tokens:.1f} / {ev.candidate.median_tokens:.0f} | "
                  f"{ev.baseline.mean_tokens:.1f} / {ev.baseline.median_tokens:.0f} |"]
        for pid, rate in ev.candidate.principle_pass.items():
            lines.append(f"| pass: {pid}{trust_note(report, pid)}{_diff(ev.differences.get(pid))} | {rate:.0%} | "
                         f"{_fmt(ev.baseline.principle_pass.get(pid), '.0%')} |")
            corrected = report.corrected_pass.get(pid)
            if corrected:
                lines.append(f"| ... corrected for the judge's errors against people | {_pct_ci(corrected['candidate'])} | "
                             f"{_pct_ci(corrected['baseline'])} |")
        for name, rate in ev.candidate.probe_pass.items():
            lines.append(f"| probe: {name}{_diff(ev.differences.get(f'probe:{name}'))} | {rate:.0%} | "
                         f"{_fmt(ev.baseline.probe_pass.get(name), '.0%')} |")
        if len(ev.looks) > 1:
            lines += ["", "| look | samples per prompt | pairs | LC win rate (interval) | verdict |", "|---|---|---|---|---|"]
            lines += [f"| {i} | {look.samples_per_prompt} | {look.pairs} | {_ci(look.lc)} | {look.verdict} |"
                      for i, look in enumerate(ev.looks, start=1)]
        lines.append("")
    if report.people:
        lines += ["## The judge against people", "",
                  "Per principle, on real pairs people labelled (gold sets' measuring parts, spot-checks, imported labels): "
                  "how often the judge's vote equals people's label, Cohen's kappa with its 95% interval, how often it "
                  "picks the reply people picked where they saw a difference (TPR), and how often it picks one where "
                  "they saw none (FPR).", "",
                  "| principle | n | accuracy | kappa (95% CI) | TPR | FPR | counts? |", "|---|---|---|---|---|---|---|"]
        for pid, a in sorted(report.people.items()):
            counts = "-" if report.judge_gate is None else ("yes" if pid in report.judge_gate.qualified else "no")
            lines.append(f"| {pid} | {a.n} | {_fmt(a.accuracy, '.0%')} | {_fmt(a.kappa, '+.2f')} ({_fmt(a.kappa_low, '+.2f')} to "
                         f"{_fmt(a.kappa_high, '+.2f')}) | {_fmt(a.true_positive_rate, '.0%')} | "
                         f"{_fmt(a.false_positive_rate, '.0%')} | {counts} |")
        lines.append("")
    if report.qualification:
        q = report.qualification
        lines += ["## Judge qualification", "", report.judge_gate.describe() if report.judge_gate else "", "",
                  "| principle | n | sensitivity (95% CI) | flip | undecided |", "|---|---|---|---|---|"]
        lines += [f"| {pid} | {p.n} | {p.sensitivity:.0%} ({p.sensitivity_low:.0%}-{p.sensitivity_high:.0%}) | "
                  f"{p.flip_rate:.0%} | {p.undecided:.0%} |" for pid, p in q.principles.items()]
        lines += ["", f"position consistency {_fmt(q.position_consistency, '.0%')}; slot bias {_fmt(q.slot_bias, '+.2f')}", ""]
    lines += ["## Rounds", "", "| round | status | win rate | LC win rate (95% CI) | position consistency | judge-human kappa | "
              "policy median tokens | promoted |", "|---|---|---|---|---|---|---|---|"]
    for p in report.history:
        median = sorted(p.policy_lengths)[len(p.policy_lengths) // 2] if p.policy_lengths else None
        lc = "-" if p.lc_win_rate is None else f"{p.lc_win_rate.estimate:.2f} ({p.lc_win_rate.low:.2f}-{p.lc_win_rate.high:.2f})"
        lines.append(f"| {p.round_index} | {p.status} | {_fmt(p.win_rate and p.win_rate.estimate)} | {lc} | "
                     f"{_fmt(p.position_consistency, '.0%')} | {_fmt(p.kappa)} | {_fmt(median, 'd')} | "
                     f"{'yes' if p.promoted else 'no'} |")
    lines += ["", "## Training", "", f"{report.train_reason or 'not trained'}"]
    if report.steps:
        first, last = report.steps[0], report.steps[-1]
        lines.append(f"- {len(report.steps)} steps; loss {first.loss:.4f} -> {last.loss:.4f}; "
                     f"reward margin {first.reward_margin:+.4f} -> {last.reward_margin:+.4f}")
    if report.audit:
        lines.append(f"- chosen longer in {_fmt(report.audit.get('chosen_longer_share'), '.0%')} of the trustworthy pairs "
                     f"(mean log length ratio {_fmt(report.audit.get('mean_log_length_ratio'), '+.2f')})")
    lines += ["", f"## Example pairs ({len(report.examples)})", ""]
    for i, ex in enumerate(report.examples, start=1):
        lines += [f"**{i}. {_one_line(ex.prompt)}** ({ex.source}, confidence {ex.confidence:.2f})", "",
                  f"- chosen: {_one_line(ex.chosen)}", f"- rejected: {_one_line(ex.rejected)}",
                  f"- why: {_one_line(ex.rationale)}", ""]
    return "\n".join(lines) + "\n"


def decision_explained(report: Report) -> str | None:
    """The evaluation's decision in one sentence that reconciles its numbers: the raw record, what
    length does to it, and what the principles that count say."""
    ev = report.eval
    if ev is None:
        return None
    verdict = {"promote": "promoted", "worse": "not promoted, the candidate is worse",
               "vetoed": "not promoted, vetoed by a check", "undecided": "undecided, the current policy stays"}[ev.decision.verdict]
    ratio = ev.candidate.mean_tokens / ev.baseline.mean_tokens - 1 if ev.baseline.mean_tokens else 0.0
    length = (f"its replies are {abs(ratio):.0%} {'shorter' if ratio < 0 else 'longer'}, and " if abs(ratio) >= 0.05 else "")
    lc = f"at equal length it wins {ev.lc.estimate:.2f} (95% CI {ev.lc.low:.2f}-{ev.lc.high:.2f})"
    counted = set(report.judge_gate.qualified) if report.judge_gate else set()
    relevant = {name: d for name, d in ev.differences.items()
                if name in counted or ((d.high < 0 or d.low > 0) and name not in (report.judge_gate.unqualified if report.judge_gate else {}))}
    ups = sorted(n for n, d in relevant.items() if d.estimate > 0.005)
    downs = sorted(n for n, d in relevant.items() if d.estimate < -0.005)
    still = sorted(set(relevant) - set(ups) - set(downs))
    parts = ([f"gains on {', '.join(f'{n} ({relevant[n].estimate:+.0%})' for n in ups)}"] if ups else []) \
        + ([f"loses on {', '.join(f'{n} ({relevant[n].estimate:+.0%})' for n in downs)}"] if downs else []) \
        + ([f"no change on {', '.join(still)}"] if still else [])
    principles = f"; on the principles that count it {'; '.join(parts)}" if parts else "; no principle that counts moved"
    return (f"{verdict}: the candidate won {ev.wins} and lost {ev.losses} of {ev.n} pairs (raw {ev.raw.estimate:.2f}); "
            f"{length}{lc}{principles}.")


def trust_note(report: Report, principle: str) -> str:
    """How far a judged principle's numbers can be trusted, as a suffix: not counted, or not yet
    checked against people (an executable check needs no note)."""
    gate = report.judge_gate
    if gate is None:
        return ""
    if principle in gate.unqualified:
        return " (judged, not counted)"
    if principle in gate.unchecked:
        return " (judged, not yet checked against people)"
    return ""


def length_control_note(ev: EvalOutcome) -> str:
    """Which length control the gate used, in one sentence."""
    if ev.length_decided == 0:
        return "No word limit of the constitution separates any pair, so every pair is length-controlled."
    return (f"A word limit of the constitution separates the two replies in {ev.length_decided:.0%} of the pairs: there "
            "length is a principle, so those pairs count as judged; the other pairs are length-controlled.")


def _ci(x: Interval) -> str:
    return f"{x.estimate:.2f} ({x.confidence:.1%} CI {x.low:.2f}-{x.high:.2f})".replace(".0% CI", "% CI")


def _pct_ci(x: Interval) -> str:
    return f"{x.estimate:.0%} ({x.low:.0%}-{x.high:.0%})"


def _diff(x: Interval | None) -> str:
    return "" if x is None else f" (difference {x.estimate:+.0%}, CI {x.low:+.0%} to {x.high:+.0%})"


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
