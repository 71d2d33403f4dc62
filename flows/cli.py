"""The `rlaif` command line: init, round, demo, status."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from constitution.loader import ConstitutionError, bundled_constitution_path, load_constitution
from flows.config import ConfigError, RoundConfig, load_config
from prompts.loader import PromptError, load_prompts
from store.db import Store, StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLM-judged preference tuning (RLAIF), one round at a time.")
console = Console()
err = Console(stderr=True)

DB_OPTION = typer.Option(None, "--db", help="DuckDB file (default: ./rlaif.duckdb, or store.path in the config)")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # never wrap paths
    raise typer.Exit(code)


def _prepare(config: RoundConfig, db: Optional[Path]) -> RoundConfig:
    """Apply --db and check every input before anything is written or a server is started."""
    if db is not None:
        config = config.model_copy(update={"store": config.store.model_copy(update={"path": str(db)})})
    load_constitution(config.constitution)
    load_prompts(config.prompts.source)
    for name, path in (("policy.path", config.policy.path), ("judge.model_path", config.judge.model_path)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{name}: {path} is not a model checkpoint directory (no config.json)")
    return config


def _run(config: RoundConfig, round_index: Optional[int]) -> None:
    # Prefect starts a temporary local server when none is configured; give it time on a slow machine
    # and keep it from phoning home.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.round import rlaif_round

    summary = rlaif_round(config=config, round_index=round_index)
    _print_summary(summary)


def _print_summary(s) -> None:
    table = Table(title=f"round {s.round_index} summary", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    num = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    table.add_row("pairs judged (both orders)", str(s.pairs_judged))
    table.add_row("position consistency", f"{_pct(s.position_consistency)} ({s.consistent_pairs} pairs)")
    table.add_row("invalid judgments", _pct(s.invalid_rate))
    table.add_row("spot-checks queued", str(s.spot_checks_queued))
    table.add_row("DPO pairs", str(s.train.n_pairs))
    table.add_row("DPO loss first / last", f"{num(s.train.first_loss)} / {num(s.train.last_loss)}")
    table.add_row("candidate win rate", "-" if s.eval is None else f"{s.eval.win_rate:.2f} (n={s.eval.n}, W/L/T {s.eval.wins}/{s.eval.losses}/{s.eval.ties})")
    table.add_row("promoted?", "yes" if s.promoted else "no")
    table.add_row("decision", s.decision)
    console.print(table)


def _guard(fn):
    """Turn input errors into a one-line message and exit code 2."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ConstitutionError, PromptError, FileNotFoundError) as exc:
            _fail(str(exc), 2)
        except StoreError as exc:
            _fail(str(exc), 1)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="where to write rlaif.yaml and constitution.yaml")) -> None:
    """Write a starter config and constitution into DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path, constitution_path = directory / "rlaif.yaml", directory / "constitution.yaml"
    for path in (config_path, constitution_path):
        if path.exists():
            _fail(f"{path} already exists; not overwriting", 2)
    shutil.copyfile(bundled_constitution_path("support"), constitution_path)
    config_path.write_text((resources.files("flows") / "starter.yaml").read_text())
    console.print(f"wrote {config_path} and {constitution_path}\nnext: rlaif round --config {config_path}")


@app.command("round")
def round_(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    db: Optional[Path] = DB_OPTION,
    round_index: Optional[int] = typer.Option(None, "--round", help="round number (default: resume the unfinished round, else the next)"),
) -> None:
    """Run one RLAIF round: sample, judge, spot-check, DPO, evaluate, promote."""
    _guard(lambda: _run(_prepare(load_config(config), db), round_index))()


@app.command()
def demo(db: Optional[Path] = DB_OPTION) -> None:
    """One round of the bundled support task at tiny size (no server or network needed)."""
    _guard(lambda: _run(_prepare(load_config(Path(str(resources.files("flows") / "demo.yaml"))), db), None))()


def _round_or_latest(store: Store, round_index: Optional[int]):
    rounds = store.rounds()
    if not rounds:
        raise StoreError(f"{store.path} has no rounds yet")
    if round_index is None:
        return rounds[-1]
    found = store.round_by_index(round_index)
    if found is None:
        raise StoreError(f"{store.path} has no round {round_index}")
    return found


@app.command()
def judge(
    config: Path = typer.Option(..., "--config", "-c", help="config whose judge section to use"),
    round_index: Optional[int] = typer.Option(None, "--round", help="round to re-judge (default: the latest)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Re-judge a stored round's pairs with the config's judge (to compare judges); cached judgments are free."""
    def run() -> None:
        cfg = _prepare(load_config(config), db)
        from flows.progress import progress_bar
        from flows.round import build_judge
        from judges.stage import judge_pairs

        constitution = load_constitution(cfg.constitution)
        with Store(cfg.db_path()) as store:
            rnd = _round_or_latest(store, round_index)
            pairs = store.pairs(rnd.round_id, "train")
            judge_ = build_judge(cfg)
            with progress_bar("judging (both orders)") as progress:
                judge_pairs(store, judge_, constitution, pairs, progress)
            _print_judge_stats(store, rnd)
    _guard(run)()


@app.command("judge-stats")
def judge_stats_command(
    round_index: Optional[int] = typer.Option(None, "--round", help="round (default: the latest)"),
    db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file"),
) -> None:
    """Position consistency, tie and invalid rates, per-principle votes, and agreement between judges."""
    def run() -> None:
        with Store(db, read_only=True) as store:
            _print_judge_stats(store, _round_or_latest(store, round_index))
    _guard(run)()


def _print_judge_stats(store: Store, rnd) -> None:
    from judges.stats import agreement, judge_stats

    grouped = store.verdicts_of_round(rnd.round_id)
    if not grouped:
        console.print(f"round {rnd.round_index} has no judged pairs")
        return
    table = Table(title=f"judges on round {rnd.round_index}")
    for col in ("judge", "constitution", "pairs", "position consistency", "ties", "invalid"):
        table.add_column(col)
    stats = {key: judge_stats(rows) for key, rows in grouped.items()}
    for (judge_id, chash), s in stats.items():
        table.add_row(judge_id, chash, str(s.pairs), _pct(s.position_consistency), _pct(s.tie_rate), _pct(s.invalid_rate))
    console.print(table)
    for (judge_id, _), s in stats.items():
        votes = Table(title=f"combined principle votes: {judge_id}")
        for col in ("principle", "a", "b", "tie", "n/a"):
            votes.add_column(col)
        for principle, counts in s.principle_votes.items():
            votes.add_row(principle, *(str(counts[k]) for k in ("a", "b", "tie", "n/a")))
        console.print(votes)
    keys = list(grouped)
    for i, left in enumerate(keys):
        for right in keys[i + 1:]:
            a = agreement(grouped[left], grouped[right])
            kappa = "-" if a.kappa is None else f"{a.kappa:.2f}"
            console.print(f"agreement {left[0]} vs {right[0]}: {_pct(a.accuracy)} same winner, kappa {kappa} (n={a.n})")


@app.command()
def status(db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file")) -> None:
    """Rounds, counts and the last metrics from the store."""
    def show() -> None:
        from judges.stats import judge_stats

        with Store(db, read_only=True) as store:
            rounds = store.rounds()
            table = Table(title=f"rounds in {db}")
            for col in ("round", "status", "policy", "pairs", "consistency", "invalid", "spot-checks", "DPO loss first→last", "win rate", "promoted", "why"):
                table.add_column(col)
            for r in rounds:
                s = r.summary_json or {}
                verdicts = store.verdicts_of_round(r.round_id).get((s.get("judge_id"), r.constitution_hash))
                stats = judge_stats(verdicts) if verdicts else None
                train, ev = s.get("train") or {}, s.get("eval") or {}
                loss = "-" if train.get("first_loss") is None else f"{train['first_loss']:.4f}→{train['last_loss']:.4f}"
                table.add_row(str(r.round_index), r.status, r.policy_id, str(stats.pairs if stats else 0),
                              _pct(stats and stats.position_consistency), _pct(stats and stats.invalid_rate),
                              str(len(store.review_queue(r.round_id))), loss,
                              "-" if not ev else f"{ev['win_rate']:.2f}", "yes" if s.get("promoted") else "no",
                              r.status_reason or "")
            console.print(table)
            counts = Table(title="rows per table")
            counts.add_column("table")
            counts.add_column("rows", justify="right")
            for name, n in store.count_rows().items():
                counts.add_row(name, str(n))
            console.print(counts)
            policy = store.current_policy()
            console.print(f"current policy: {policy.model_id if policy else '-'} ({policy.kind if policy else ''})")
    _guard(show)()


if __name__ == "__main__":
    sys.exit(app())
