"""The `rlaif` command line: init, round, loop, collect, demo, serve, server, train, compare; status,
judge-stats, export, report, track (flows/cli_inspect.py); judge ... (flows/cli_judge.py); review ...
(flows/cli_review.py). Errors and the `--db` rule: flows/cli_common.py."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from constitution.loader import bundled_constitution_path
from flows import cli_inspect
from flows.cli_common import DB_OPTION, SET_OPTION, absolute_db, console, fail, guard, prefect_defaults, usable_store
from flows.cli_judge import judge_app
from flows.cli_review import review_app
from flows.config import ConfigError, RoundConfig, checked_config, load_config

# peft reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model in a LoRA
# adapter; the FutureWarning is about peft's code, not ours, and says nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LLM-judged preference tuning (RLAIF), one round at a time.")
app.add_typer(judge_app, name="judge")
app.add_typer(review_app, name="review")
app.command("status")(cli_inspect.status)
app.command("judge-stats")(cli_inspect.judge_stats)
app.command("export")(cli_inspect.export)
app.command("report")(cli_inspect.report)
app.command("track")(cli_inspect.track)


def _run(config: RoundConfig, round_index: Optional[int]) -> None:
    usable_store(config.store)
    prefect_defaults()
    from flows.round import rlaif_round
    from flows.tables import summary_table

    console.print(summary_table(rlaif_round(config=config, round_index=round_index)))


@app.command()
@guard
def init(directory: Path = typer.Argument(Path("."), help="where to write the files"),
         domain: Optional[str] = typer.Option(None, "--domain", help="scaffold a new domain of this name: its "
                                              "constitution (with system prompt), prompts and config, with comments")) -> None:
    """Write a starter config and constitution into DIRECTORY (the bundled support task's), or, with
    --domain NAME, a new domain to fill in: constitution.yaml, prompts.yaml and rlaif.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path, constitution_path, prompts_path = directory / "rlaif.yaml", directory / "constitution.yaml", directory / "prompts.yaml"
    written = [config_path, constitution_path] + ([prompts_path] if domain else [])
    for path in written:
        if path.exists():
            fail(f"{path} already exists; not overwriting", 2)
    starter = (resources.files("flows") / "starter.yaml").read_text()
    if domain is None:
        shutil.copyfile(bundled_constitution_path("support"), constitution_path)
    else:
        if not domain.replace("-", "").replace("_", "").isalnum():
            fail(f"--domain {domain!r}: use letters, digits, '-' or '_'", 2)
        for name, path in (("constitution.yaml", constitution_path), ("prompts.yaml", prompts_path)):
            path.write_text((resources.files("flows") / "domain" / name).read_text().replace("{name}", domain))
        starter = starter.replace("source: bundled:support", "source: prompts.yaml").replace("gold: [bundled:support]", "gold: []")
    config_path.write_text(starter)
    console.print(f"wrote {', '.join(str(p) for p in written)}\nnext: rlaif round --config {config_path}")


@app.command("round")
@guard
def round_(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    db: Optional[str] = DB_OPTION,
    round_index: Optional[int] = typer.Option(None, "--round", help="round number (default: resume the unfinished round, else the next)"),
    overrides: list[str] = SET_OPTION,
) -> None:
    """Run one RLAIF round: sample, judge, spot-check, DPO, evaluate, promote."""
    _run(checked_config(load_config(config, overrides), db), round_index)


@app.command()
@guard
def loop(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="rounds to run, each from the latest promoted policy"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Run several rounds in one flow run (stops early at a round that waits for reviews)."""
    usable_store(checked_config(load_config(config, overrides), db).store)  # fail on bad input before Prefect starts
    prefect_defaults()
    from flows.loop import rlaif_loop
    from flows.tables import summary_table

    for summary in rlaif_loop(config_path=str(config.resolve()), rounds=rounds, db=absolute_db(db), overrides=overrides):
        console.print(summary_table(summary))


@app.command()
@guard
def collect(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML (its collect section says where replies come from)"),
    file: Optional[Path] = typer.Option(None, "--file", help="judge the prompts and replies of this JSONL/Parquet file "
                                        "(sets collect.source to file)"),
    night: Optional[str] = typer.Option(None, "--night", help="the night this collection is for, YYYY-MM-DD (default: "
                                        "today, UTC); the same night twice stores nothing twice"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Collect preferences and stop: replies from the policy, an endpoint or a file, judged in both
    orders, spot-checks routed, stored. No training (export them with `rlaif export`)."""
    from datetime import date

    if file is not None:
        overrides = [*overrides, "collect.source=file", f"collect.file={file.resolve()}"]
    if night is not None:
        try:
            date.fromisoformat(night)
        except ValueError:
            raise ConfigError(f"--night {night!r}: expected a date, YYYY-MM-DD") from None
    usable_store(checked_config(load_config(config, overrides), db).store)  # bad input fails before Prefect starts
    prefect_defaults()
    from flows.collect import rlaif_collect
    from flows.tables import collect_table

    console.print(collect_table(rlaif_collect(config_path=str(config.resolve()), db=absolute_db(db), overrides=overrides,
                                              night=night)))


@app.command()
@guard
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML (read again at every run)"),
    cron: str = typer.Option("0 2 * * *", "--cron", help="when to run (cron syntax)"),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of the cron, e.g. Europe/Berlin"),
    rounds: int = typer.Option(1, "--rounds", min=1, help="rounds per run"),
    name: str = typer.Option("nightly", "--name", help="deployment name"),
    collect: bool = typer.Option(False, "--collect", help="serve the collection flow (rlaif-collect: no training) "
                                 "instead of the round loop (rlaif-loop)"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Serve the loop flow (or, with --collect, the collection flow) as a scheduled deployment and run
    what it schedules (stop with Ctrl-C).

    Needs a Prefect server that outlives this process: `rlaif server`, then PREFECT_API_URL.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron
    from prefect.settings import get_current_settings

    checked_config(load_config(config, overrides), db)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {timezone}: not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    if len(cron.split()) != 5:
        raise ConfigError(f"--cron {cron!r}: expected 5 fields (minute hour day month weekday)")
    if not get_current_settings().api.url:
        raise ConfigError("PREFECT_API_URL is not set: start a server with `rlaif server` and "
                          "export PREFECT_API_URL=http://127.0.0.1:4200/api (a temporary server would lose the schedule)")
    if collect:
        from flows.collect import rlaif_collect

        rlaif_collect.serve(name=name, schedules=[Cron(cron, timezone=timezone)], tags=["rlaif"],
                            entrypoint_type=EntrypointType.MODULE_PATH,
                            parameters={"config_path": str(config.resolve()), "db": absolute_db(db), "overrides": overrides},
                            description=f"preference collection of {config.name} at '{cron}' ({timezone})")
        return
    from flows.loop import rlaif_loop

    # by module path: the runner finds the installed flow wherever `rlaif serve` was started
    rlaif_loop.serve(name=name, schedules=[Cron(cron, timezone=timezone)], tags=["rlaif"],
                     entrypoint_type=EntrypointType.MODULE_PATH,
                     parameters={"config_path": str(config.resolve()), "rounds": rounds, "db": absolute_db(db),
                                 "overrides": overrides},
                     description=f"{rounds} RLAIF round(s) of {config.name} at '{cron}' ({timezone})")


@app.command()
def server(port: int = typer.Option(4200, "--port", help="port on 127.0.0.1")) -> None:
    """Start a local Prefect server on 127.0.0.1 (runs until stopped); `rlaif serve` and workers use it."""
    prefect = Path(sys.executable).with_name("prefect")
    console.print(f"Prefect server on http://127.0.0.1:{port}; in other shells:\n"
                  f"  export PREFECT_API_URL=http://127.0.0.1:{port}/api", highlight=False)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.execv(str(prefect), [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)])


@app.command()
@guard
def demo(db: Optional[str] = DB_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """One round of the bundled support task at tiny size (no server or network needed)."""
    _run(checked_config(load_config(Path(str(resources.files("flows") / "demo.yaml")), overrides), db), None)


@app.command()
@guard
def train(
    config: Path = typer.Option(..., "--config", "-c", help="round config YAML"),
    round_index: int = typer.Option(..., "--round", help="the round whose judged pairs to train on"),
    judge_id: Optional[str] = typer.Option(None, "--judge-id", help="whose verdicts (needed only if several judges judged the round)"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Train a judged round's candidate adapter; run it under `accelerate launch` for several GPUs.

    A later `rlaif round` finds the candidate, evaluates it and decides on promotion.
    """
    from flows.tables import num
    from flows.train import TrainRefused, train_round

    cfg = checked_config(load_config(config, overrides), db)
    try:
        outcome = train_round(cfg, round_index, judge_id)
    except TrainRefused as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            fail(f"round {round_index}: not training: {exc}", 1)
        raise typer.Exit(1) from None
    if outcome is not None:  # the main process reports
        console.print(f"round {round_index}: {outcome.reason}; candidate {outcome.candidate_id} "
                      f"(loss {num(outcome.first_loss)} -> {num(outcome.last_loss)}; reference: {outcome.reference})")


@app.command()
@guard
def compare(
    model_a: str = typer.Argument(..., metavar="MODEL_A", help="a model id from `rlaif status` / the models table"),
    model_b: str = typer.Argument(..., metavar="MODEL_B"),
    config: Path = typer.Option(..., "--config", "-c", help="config whose prompts, judge, sampler and eval sections to use"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Held-out comparison of any two stored models: A's win rate, LC win rate, pass rates, lengths."""
    from flows.compare import compare_models
    from flows.tables import comparison_table

    cfg = checked_config(load_config(config, overrides), db)
    console.print(comparison_table(model_a, model_b, compare_models(cfg, model_a, model_b)))


if __name__ == "__main__":
    sys.exit(app())
