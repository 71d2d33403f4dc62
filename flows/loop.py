"""Several rounds in one flow run: the `nightly` deployment's flow.

Each round starts from the latest promoted policy (begin_round picks it). The rounds run inside this
flow run, not as subflows, so a deployed run suspends at a round's review gate as a whole and, once
resumed, starts over: rounds this flow run already finished are counted (rounds.flow_run_id), the
unfinished one resumes from the store, and only the rest are new.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.config import RoundConfig, checked_config, load_config
from flows.round import RoundSummary, execute_round
from store.db import Store


@flow(name="rlaif-loop")
def rlaif_loop(config_path: str, rounds: int = 1, db: str | None = None, overrides: list[str] | None = None) -> list[RoundSummary]:
    """Run `rounds` rounds of the config at `config_path` (read at run time: edits apply to the next
    run), with `overrides` (`--set SECTION.FIELD=VALUE`) applied."""
    logger = get_run_logger()
    config = checked_config(load_config(config_path, overrides or []), db)
    summaries: list[RoundSummary] = []
    while (done := finished_by_this_run(config)) < rounds:
        logger.info("loop: %d of %d rounds finished by this flow run", done, rounds)
        summary = execute_round(config)
        summaries.append(summary)
        if summary.status == "waiting_for_review":
            logger.warning("loop stops: round %d is waiting for reviews", summary.round_index)
            break
    return summaries


def finished_by_this_run(config: RoundConfig) -> int:
    if flow_run.id is None or config.store.kind == "duckdb" and not config.store.file.exists():
        return 0
    with Store(config.store, read_only=True) as store:
        return sum(r.flow_run_id == str(flow_run.id) and r.status == "finished" for r in store.rounds())
