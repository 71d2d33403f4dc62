"""Tables the CLI and the benchmarks print (rich), so a number reads the same wherever it is shown."""

from __future__ import annotations

from rich.table import Table

from judges.qualification import QualificationGate, QualificationResult


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def qualification_table(result: QualificationResult, trusted: QualificationGate | None = None) -> Table:
    """Per principle: sensitivity with its 95% interval, wrong votes, flips, undecided, the mean score
    towards the intact answer (its sign says which way the judge leans below the tie margin); the gate."""
    table = Table(title=f"qualification of {result.judge_id} ({result.split} set {result.set_hash}, {result.pairs} pairs)")
    for col in ("principle", "n", "sensitivity (95% CI)", "wrong", "flip", "undecided", "score", "counts?"):
        table.add_column(col)
    for pid, q in result.principles.items():
        counts = "-" if trusted is None else ("yes" if pid in trusted.qualified else "no")
        table.add_row(pid, str(q.n), f"{q.sensitivity:.0%} ({q.sensitivity_low:.0%}-{q.sensitivity_high:.0%})",
                      pct(q.wrong), pct(q.flip_rate), pct(q.undecided), f"{q.mean_score:+.2f}", counts)
    bias = "-" if result.slot_bias is None else f"{result.slot_bias:+.2f}"
    table.caption = (f"position consistency {pct(result.position_consistency)}; slot bias {bias} on identical answers "
                     f"({pct(result.identical_tie_rate)} tie); {result.seconds_per_pair:.2f} s per pair (both orders)")
    return table
