"""Tables the CLI and the benchmarks print (rich), so a number reads the same wherever it is shown.
Each function takes typed data and returns renderables; none of them reads the store."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from rich import box
from rich.table import Table

from evals.report_data import RoundPoint
from evals.stage import EvalOutcome
from judges.qualification import QualificationGate, QualificationResult
from judges.stats import Agreement, JudgeStats
from stats.agreement import LabelAgreement
from stats.intervals import Interval
from store.rows import AgreementRow


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ci(x: Interval | None) -> str:
    """An estimate with its interval: `0.56 (95% CI 0.41-0.70)`."""
    return "-" if x is None else f"{x.estimate:.2f} ({x.confidence:.0%} CI {x.low:.2f}-{x.high:.2f})"


def qualification_table(result: QualificationResult, trusted: QualificationGate | None = None) -> Table:
    """Per principle: known-answer pairs and the distinct violation texts behind them, sensitivity with
    its 95% interval (a bootstrap over the texts), wrong votes, flips, undecided, the mean score
    towards the intact answer (its sign says which way the judge leans below the tie margin); the gate."""
    table = Table(title=f"qualification of {result.judge_id} ({result.split} set {result.set_hash}, {result.pairs} pairs)")
    for col in ("principle", "pairs (texts)", "sensitivity (95% CI)", "wrong", "flip", "undecided", "score", "counts?"):
        table.add_column(col)
    for pid, q in result.principles.items():
        counts = "-" if trusted is None else ("yes" if pid in trusted.qualified else "no")
        table.add_row(pid, f"{q.n} ({q.texts or '?'})", f"{q.sensitivity:.0%} ({q.sensitivity_low:.0%}-{q.sensitivity_high:.0%})",
                      pct(q.wrong), pct(q.flip_rate), pct(q.undecided), f"{q.mean_score:+.2f}", counts)
    bias = "-" if result.slot_bias is None else f"{result.slot_bias:+.2f}"
    table.caption = (f"position consistency {pct(result.position_consistency)}; slot bias {bias} on identical answers "
                     f"({pct(result.identical_tie_rate)} tie); {result.seconds_per_pair:.2f} s per pair (both orders)")
    return table


def people_table(judge_id: str, people: dict[str, LabelAgreement], trusted: QualificationGate | None = None) -> Table:
    """Per principle, the judge against people on real pairs: agreement, kappa with its interval, how
    often it decides where people see a difference (TPR) and where they see none (FPR); and whether
    the principle counts."""
    table = Table(title=f"{judge_id} against people (labelled real pairs, 95% CI)")
    for col in ("principle", "n", "accuracy", "kappa (95% CI)", "TPR", "FPR", "counts?"):
        table.add_column(col)
    for pid, a in sorted(people.items()):
        kappa = "-" if a.kappa is None else f"{a.kappa:+.2f} ({num(a.kappa_low, 2)} to {num(a.kappa_high, 2)})"
        counts = "-" if trusted is None else ("yes" if pid in trusted.qualified else "no")
        table.add_row(pid, str(a.n), pct(a.accuracy), kappa, pct(a.true_positive_rate), pct(a.false_positive_rate), counts)
    return table


def co_decision_table(judge: dict[tuple[str, str], tuple[int, float]], people: dict[tuple[str, str], tuple[int, float]]) -> Table:
    """For every two principles: how often both picked the same reply, the judge's votes vs people's labels."""
    table = Table(title="do two principles pick the same reply? (pairs where both picked one)")
    for col in ("principles", "judge: same (n)", "people: same (n)"):
        table.add_column(col)
    for key in sorted(judge.keys() | people.keys()):
        cells = [f"{pct(found[1])} ({found[0]})" if (found := side.get(key)) else "-" for side in (judge, people)]
        table.add_row(f"{key[0]} + {key[1]}", *cells)
    return table


def summary_table(s) -> Table:
    """A finished round (flows.round.RoundSummary) as label / value rows."""
    table = Table(title=f"round {s.round_index} summary", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    table.add_row("pairs judged (both orders)", str(s.pairs_judged))
    table.add_row("position consistency", f"{pct(s.position_consistency)} ({s.consistent_pairs} pairs)")
    table.add_row("invalid judgments", pct(s.invalid_rate))
    table.add_row("judge qualification", s.judge_gate.describe())
    table.add_row("spot-checks queued", str(s.spot_checks_queued))
    table.add_row("judge-human agreement", "-" if s.agreement is None else s.agreement.reason)
    table.add_row("DPO pairs", str(s.train.n_pairs))
    table.add_row("DPO loss first / last", f"{num(s.train.first_loss)} / {num(s.train.last_loss)}")
    ev = s.eval
    table.add_row("evaluation", "-" if ev is None else
                  f"{ev.prompts} held-out prompts x {ev.samples_per_prompt} samples, {ev.n} pairs, W/L/T {ev.wins}/{ev.losses}/{ev.ties}")
    table.add_row("candidate win rate", "-" if ev is None else ci(ev.raw))
    table.add_row("length-controlled win rate", "-" if ev is None else
                  f"{ci(ev.lc)}; detects >= {num(ev.minimum_detectable, 2)}")
    table.add_row("promoted?", "yes" if s.promoted else "no")
    table.add_row("decision", s.decision)
    return table


def collect_table(s) -> Table:
    """A finished collection (flows.collect.CollectSummary) as label / value rows."""
    table = Table(title=f"collection {s.round_index} ({s.round_id})", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    table.add_row("replies from", s.source)
    table.add_row("replies stored", str(s.completions))
    table.add_row("pairs judged (both orders)", str(s.pairs_judged))
    table.add_row("position consistency", f"{pct(s.position_consistency)} ({s.consistent_pairs} pairs)")
    table.add_row("invalid judgments", pct(s.invalid_rate))
    table.add_row("judge qualification", s.judge_gate.describe())
    table.add_row("spot-checks queued", str(s.spot_checks_queued))
    table.add_row("next", f"rlaif review serve (the queue); rlaif export OUT --round {s.round_index}")
    return table


class StatusLine(BaseModel):
    """One round of `rlaif status`: its point on the report's history plus what the table adds."""

    point: RoundPoint
    pairs: int       # judged pairs (the round's judge)
    queued: int      # spot-checks queued
    reviewed: int    # ... of which have a human label
    first_loss: float | None
    last_loss: float | None


def status_table(where: str, lines: Sequence[StatusLine]) -> Table:
    """Rounds at a glance, readable in an 80-column terminal: short headers, one number per column."""
    table = Table(title=f"rounds in {where}", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    for col, justify in (("#", "right"), ("status", "left"), ("pairs", "right"), ("consistent", "right"),
                         ("reviewed", "right"), ("κ", "right"), ("DPO loss", "left"), ("LC win", "right"), ("promoted", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for line in lines:
        p = line.point
        loss = "-" if line.first_loss is None else f"{line.first_loss:.2f}→{line.last_loss:.2f}"
        table.add_row(str(p.round_index), p.status.replace("waiting_for_review", "waiting"), str(line.pairs),
                      pct(p.position_consistency), f"{line.reviewed}/{line.queued}", num(p.kappa, 2), loss,
                      num(None if p.lc_win_rate is None else p.lc_win_rate.estimate, 2), "yes" if p.promoted else "no")
    return table


def evaluations_table(points: Sequence[RoundPoint]) -> Table:
    """Each round's evaluation: its size, both win rates with their intervals, the smallest true LC win
    rate it would promote, and the gate's verdict. Fits 80 columns."""
    table = Table(title="evaluations (95% CI; bootstrap over prompts)", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, collapse_padding=True)
    for col, justify in (("#", "right"), ("prompts×k", "right"), ("raw win", "left"), ("LC win", "left"),
                         ("detects", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for p in points:
        if p.lc_win_rate is None or p.win_rate is None:
            continue
        table.add_row(str(p.round_index), f"{p.prompts}×{p.samples_per_prompt}", _short_ci(p.win_rate), _short_ci(p.lc_win_rate),
                      "-" if p.minimum_detectable is None else f">={p.minimum_detectable:.2f}", p.verdict or "-")
    return table


def _short_ci(x: Interval) -> str:
    return f"{x.estimate:.2f} ({x.low:.2f}-{x.high:.2f})"


def agreement_table(round_index: int, rows: Sequence[AgreementRow]) -> Table:
    table = Table(title=f"judge-human agreement, round {round_index}")
    for col in ("scope", "subject", "n", "accuracy", "kappa"):
        table.add_column(col)
    for a in rows:
        table.add_row(a.scope, a.subject or "all", str(a.n), pct(a.accuracy), num(a.kappa, 2))
    return table


def counts_table(counts: dict[str, int]) -> Table:
    table = Table(title="rows per table")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, str(n))
    return table


def judge_stats_tables(round_index: int, stats: dict[tuple[str, str], JudgeStats]) -> list[Table]:
    """Every judge of a round: consistency, ties, invalids, then each judge's combined principle votes."""
    table = Table(title=f"judges on round {round_index}")
    for col in ("judge", "constitution", "pairs", "position consistency", "ties", "invalid"):
        table.add_column(col)
    for (judge_id, chash), s in stats.items():
        table.add_row(judge_id, chash, str(s.pairs), pct(s.position_consistency), pct(s.tie_rate), pct(s.invalid_rate))
    tables = [table]
    for (judge_id, _), s in stats.items():
        votes = Table(title=f"combined principle votes: {judge_id}")
        for col in ("principle", "a", "b", "tie", "n/a"):
            votes.add_column(col)
        for principle, counts in s.principle_votes.items():
            votes.add_row(principle, *(str(counts[k]) for k in ("a", "b", "tie", "n/a")))
        tables.append(votes)
    return tables


def judges_agreement_line(left: str, right: str, a: Agreement) -> str:
    return f"agreement {left} vs {right}: {pct(a.accuracy)} same winner, kappa {num(a.kappa, 2)} (n={a.n})"


def comparison_table(model_a: str, model_b: str, ev: EvalOutcome) -> Table:
    """`rlaif compare`: A's win rates against B, and both models' lengths and pass rates."""
    table = Table(title=f"{model_a} (A) vs {model_b} (B) on {ev.prompts} held-out prompts x {ev.samples_per_prompt} samples")
    for col in ("metric", "A", "B"):
        table.add_column(col)
    table.add_row("win rate of A", f"{ci(ev.raw)}, W/L/T {ev.wins}/{ev.losses}/{ev.ties}", "")
    table.add_row("length-controlled win rate of A", f"{ci(ev.lc)}; every pair corrected: {ci(ev.lc_plain)}", "")
    table.add_row("smallest true LC win rate this detects", num(ev.minimum_detectable, 2), "")
    table.add_row("decision", ev.decision.reason, "")
    table.add_row("judge position consistency", pct(ev.consistency), "")
    table.add_row("mean / median tokens", f"{ev.candidate.mean_tokens:.1f} / {ev.candidate.median_tokens:.0f}",
                  f"{ev.baseline.mean_tokens:.1f} / {ev.baseline.median_tokens:.0f}")
    for pid, rate in ev.candidate.principle_pass.items():
        table.add_row(f"pass: {pid}{difference(ev.differences.get(pid))}", pct(rate), pct(ev.baseline.principle_pass.get(pid)))
    for name, rate in ev.candidate.probe_pass.items():
        table.add_row(f"probe: {name}{difference(ev.differences.get(f'probe:{name}'))}", pct(rate),
                      pct(ev.baseline.probe_pass.get(name)))
    return table


def difference(diff: Interval | None) -> str:
    """A paired pass-rate difference A - B with its interval, as a suffix: ` (A-B +25%, CI +5% to +45%)`."""
    if diff is None:
        return ""
    return f" (A-B {diff.estimate:+.0%}, CI {diff.low:+.0%} to {diff.high:+.0%})"
