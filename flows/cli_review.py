"""`rlaif review ...`: reviewers and their tokens, the review page, the terminal review, the gate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from uuid import UUID

import typer
from rich.markup import escape

from flows.cli_common import CONFIG_OPTION, DB_OPTION, console, err, existing_store, fail, guard, store_location
from flows.config import RoundConfig, load_config
from store.db import Store

review_app = typer.Typer(no_args_is_help=True, help="Human spot-check review: reviewers, the review page, the gate.")


def review_settings(config: Optional[Path]):
    """(constitution, review section) of a config, or of the defaults."""
    from constitution.loader import load_constitution

    cfg = load_config(config) if config else RoundConfig()
    return load_constitution(cfg.constitution), cfg.review


@review_app.command("add-reviewer")
@guard
def add_reviewer(name: str = typer.Argument(..., help="the reviewer's name (letters, digits, - _ .)"),
                 db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Register a reviewer and print their token (shown once; only its hash is stored)."""
    from review.session import add_reviewer

    with existing_store(store_location(db, config)) as store:
        token = add_reviewer(store, name)
    console.print(f"reviewer {escape(name)} added. Token (keep it secret, it is not stored):")
    console.print(token, highlight=False, soft_wrap=True)


@review_app.command("revoke")
@guard
def revoke(name: str = typer.Argument(..., help="the reviewer's name"),
           db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Stop a reviewer's token and log out their browsers (their labels stay; add-reviewer NAME
    gives them a new token)."""
    from review.session import revoke_reviewer

    with existing_store(store_location(db, config)) as store:
        revoke_reviewer(store, name)
    console.print(f"reviewer {escape(name)} revoked: their token no longer works and their sessions are ended")


@review_app.command("serve")
@guard
def serve(db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION,
          host: str = typer.Option("127.0.0.1", help="bind address; anything but loopback exposes the page to your network"),
          port: int = typer.Option(8765, help="port")) -> None:
    """Serve the review page (reviewer token required)."""
    import uvicorn

    from review.app import create_app
    from store.db import opener_for_requests

    constitution, settings = review_settings(config)
    location = store_location(db, config)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {escape(host)}: the review page is reachable from your network")
    existing_store(location).close()  # apply migrations now, and fail now if a round holds a DuckDB file

    def on_round_done(store: Store, round_index: int) -> None:
        release(store, round_index, "the review queue was finished")
    web = create_app(opener_for_requests(location), constitution, reviews_per_pair=settings.reviews_per_pair,
                     on_round_done=on_round_done, session_ttl_s=settings.session_ttl, hosts=[host])
    console.print(f"review page on http://{host}:{port}/ (log in with a token from `rlaif review add-reviewer`)")
    uvicorn.run(web, host=host, port=port, log_level="warning")


def release(store: Store, round_index: int, released_by: str) -> str:
    """Let round `round_index` train without waiting for more reviews; resume it if it is suspended."""
    from review.session import round_or_error

    rnd = round_or_error(store, round_index)
    store.release_review(rnd.round_id)
    if rnd.status == "waiting_for_review" and rnd.flow_run_id is not None and _suspended(rnd.flow_run_id):
        from prefect.flow_runs import resume_flow_run

        resume_flow_run(UUID(rnd.flow_run_id), run_input={"released_by": released_by})
        return f"round {round_index} released; its suspended flow run {rnd.flow_run_id} resumes"
    return f"round {round_index} released: its next run trains without waiting for reviews"


def _suspended(flow_run_id: str) -> bool:
    """Is the round's flow run suspended at the gate? Only a deployed run can be, and a deployment
    needs a Prefect server that outlives it (PREFECT_API_URL): without one, there is nothing to resume."""
    from prefect import get_client
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return state is not None and state.is_paused()


@review_app.command("import")
@guard
def review_import(path: Path = typer.Argument(..., metavar="FILE", help="labels: JSONL or CSV (see below)"),
                  reviewer: Optional[str] = typer.Option(None, help="reviewer of rows that name none"),
                  db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Import labels made elsewhere as reviews. One label per row: pair_id (or prompt, text_a and
    text_b, matched to a stored pair), winner a|b|tie, optional principle, reviewer, rationale. A file
    with a bad row stores nothing and the error names its line."""
    from review.imports import import_labels

    constitution, _ = review_settings(config)
    with existing_store(store_location(db, config)) as store:
        found = import_labels(store, path, constitution, reviewer)
    principles = f" (per principle: {', '.join(found.principles)})" if found.principles else ""
    console.print(f"{found.rows} labels of {found.pairs} pairs read from {escape(str(path))}{principles}; "
                  f"{found.stored} new reviews stored", highlight=False)


@review_app.command("release")
@guard
def review_release(round_index: int = typer.Argument(..., metavar="ROUND"),
                   db: Optional[str] = DB_OPTION, config: Optional[Path] = CONFIG_OPTION) -> None:
    """Open the review gate of ROUND (agreement is still checked on the reviews there are)."""
    with existing_store(store_location(db, config)) as store:
        console.print(release(store, round_index, "rlaif review release"))


@review_app.command("next")
@guard
def review_next(
    round_index: int = typer.Option(..., "--round", help="round to review"),
    db: Optional[str] = DB_OPTION,
    config: Optional[Path] = CONFIG_OPTION,
    token: str = typer.Option(..., envvar="RLAIF_REVIEWER_TOKEN", prompt=True, hide_input=True, help="your reviewer token"),
) -> None:
    """Review in the terminal: 1/2/3 = response 1 / response 2 / tie, s = skip, u = undo, q = quit."""
    from review.session import next_item, queue_progress, record_review, reviewer_for_token, undo_last
    from review.text_safety import visible_segments

    constitution, settings = review_settings(config)
    per_pair = settings.reviews_per_pair
    with existing_store(store_location(db, config)) as store:
        reviewer = reviewer_for_token(store, token)
        if reviewer is None:
            fail("that token belongs to no reviewer (see `rlaif review add-reviewer`)", code=1)
        console.print("[bold]Guidelines[/]")
        for number, p in enumerate(constitution.principles, start=1):
            console.print(f"{number}. {escape(p.id)}: {escape(p.text)}", highlight=False)
        principle_ids = [p.id for p in constitution.principles]
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
                console.print("undid your last review" if undo_last(store, round_index, reviewer.reviewer_id) else "nothing to undo")
                continue
            choice = {"1": "left", "2": "right", "3": "tie", "s": "skip"}.get(key)
            if choice is None:
                console.print("type 1, 2, 3, s, u or q")
                continue
            principle = None
            if choice != "skip":
                number = typer.prompt(f"which principle decided? (1-{len(principle_ids)}, Enter for none)", default="",
                                      show_default=False).strip()
                if number.isdigit() and 1 <= int(number) <= len(principle_ids):
                    principle = principle_ids[int(number) - 1]
            rationale = "" if choice == "skip" else typer.prompt("why? (Enter to skip)", default="", show_default=False)
            record_review(store, round_index, reviewer.reviewer_id, item.pair_id, choice, rationale, per_pair,
                          principle=principle, principles=frozenset(principle_ids))
        done = queue_progress(store, round_index, reviewer.reviewer_id, per_pair)
        console.print(f"nothing left for you in round {round_index} ({done.done}/{done.total} pairs done)")
