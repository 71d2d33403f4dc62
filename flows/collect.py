"""Preference collection as its own job (`rlaif collect`, the `collect` deployment): replies from the
current policy, an OpenAI-compatible endpoint or a file, judged in both orders against the
constitution, checks applied, spot-checks routed, everything stored; then it stops. No training, no
evaluation, no promotion: the pairs are for the review queue and for `rlaif export`.

    measure the judge -> replies (policy | openai | file) -> judge each pair in both orders
    (n > 2: every two replies of a prompt) -> route spot-checks -> stop

A collection is stored as a round whose id starts with "collect-" (RoundRow.kind): it has a number,
a review queue, judge statistics and an export like any round, but a training round neither resumes
it nor mixes its pairs in. Its id is its identity, so the same file (by its bytes) or the same night
(source, date) collected twice is one collection: a rerun finishes what is missing and stores
nothing twice. Its stages run in this process (`workers` is for training rounds).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from constitution.loader import Constitution, load_constitution
from flows.config import RoundConfig, checked_config, load_config
from flows.judging import judge_server, refuse_unqualified
from flows.progress import progress_bar
from flows.round import stop_on_sigterm, store_inputs
from flows.stages import (
    JUDGING,
    NETWORK_RETRIES,
    NETWORK_RETRY_DELAY_S,
    QUALIFY,
    SAMPLING,
    RoundContext,
    RoundStage,
    SamplingOutcome,
    run_stage,
    select_train_prompts,
)
from judges.qualification import QualificationGate
from lm.loading import base_checkpoint, load_tokenizer, set_threads
from prompts.loader import Prompt, load_prompts
from sampling.collected import file_completions, file_key, file_prompts, read_collected_file
from sampling.endpoint import EndpointSampler
from sampling.stage import collected_rows, pair_samples, sample_for_round
from store.db import Store, StoreError
from store.ids import stable_id, stable_int
from store.rows import COLLECT_PREFIX, RoundRow


class CollectSummary(BaseModel):
    round_index: int
    round_id: str
    source: Literal["policy", "openai", "file"]
    policy_id: str
    judge_id: str
    completions: int
    pairs_judged: int
    consistent_pairs: int
    position_consistency: float | None
    invalid_rate: float | None
    judge_gate: QualificationGate
    spot_checks_queued: int
    decision: str


@flow(name="rlaif-collect")
def rlaif_collect(config_path: str, db: str | None = None, overrides: list[str] | None = None,
                  night: str | None = None) -> CollectSummary:
    """One collection of the config at `config_path` (read at run time), for `night` (YYYY-MM-DD;
    empty = today, UTC)."""
    return execute_collect(checked_config(load_config(config_path, overrides or []), db), night)


def execute_collect(config: RoundConfig, night: str | None = None) -> CollectSummary:
    logger = get_run_logger()
    constitution = load_constitution(config.constitution)
    prompts = collect_prompts(config)
    round_id = collection_id(config, night)
    with Store(config.store) as store:
        rnd = begin_collection(store, config, constitution, prompts, round_id)
        if rnd.status == "finished" and rnd.summary_json is not None:
            logger.info("collection %d (%s) is already stored: nothing to do", rnd.round_index, rnd.round_id)
            return CollectSummary.model_validate(rnd.summary_json)
        ctx = RoundContext(store, config, constitution, prompts, rnd, set_threads(config.runtime.threads))
        logger.info("collection %d (%s): replies from %s, constitution %s", rnd.round_index, rnd.round_id,
                    config.collect.source, constitution.content_hash)
        try:
            with stop_on_sigterm(rnd.round_index), judge_server(config):
                trusted = run_stage(ctx, QUALIFY)
                refuse_unqualified(config, constitution, trusted)
                sampled = run_stage(ctx, SAMPLING if config.collect.source == "policy" else COLLECTED)
                judged = run_stage(ctx, JUDGING)
        except BaseException as exc:
            store.finish_round(rnd.round_id, "failed", f"{type(exc).__name__}: {exc}", {})
            raise
        store.set_round_judge(rnd.round_id, judged.judge_id)
        summary = CollectSummary(
            round_index=rnd.round_index, round_id=rnd.round_id, source=config.collect.source, policy_id=rnd.policy_id,
            judge_id=judged.judge_id, completions=sampled.completions, pairs_judged=judged.pairs_judged,
            consistent_pairs=judged.consistent_pairs, position_consistency=judged.position_consistency,
            invalid_rate=judged.invalid_rate, judge_gate=trusted, spot_checks_queued=judged.spot_checks_queued,
            decision=(f"collected: {judged.pairs_judged} pairs judged ({judged.consistent_pairs} consistent in both orders), "
                      f"{judged.spot_checks_queued} queued for review; no training"))
        store.finish_round(rnd.round_id, "finished", summary.decision, summary.model_dump(mode="json"))
        logger.info("collection %d finished: %s", rnd.round_index, summary.decision)
        return summary


def collection_id(config: RoundConfig, night: str | None) -> str:
    """What makes a collection the same one: a file's bytes, or the source and the night."""
    source = config.collect.source
    if source == "file":
        assert config.collect.file is not None  # checked by the config
        return f"{COLLECT_PREFIX}file-{file_key(Path(config.collect.file))}"
    night = night or datetime.now(timezone.utc).date().isoformat()
    if source == "openai":
        assert config.collect.openai is not None
        return f"{COLLECT_PREFIX}{night}-openai-{stable_id(config.collect.openai.base_url, config.collect.openai.model)[:6]}"
    return f"{COLLECT_PREFIX}{night}-policy"


def collect_prompts(config: RoundConfig) -> list[Prompt]:
    """The prompts a collection answers: the file's, else the config's prompt source."""
    if config.collect.source == "file":
        assert config.collect.file is not None
        path = Path(config.collect.file)
        return file_prompts(read_collected_file(path), f"collect:{path.name}")
    return load_prompts(config.prompts.source)


def begin_collection(store: Store, config: RoundConfig, constitution: Constitution, prompts: list[Prompt],
                     round_id: str) -> RoundRow:
    """The collection's round row: the stored one (resumed) or a new one numbered after every round."""
    store_inputs(store, config, prompts)
    rounds = store.rounds()
    existing = [r for r in rounds if r.round_id == round_id]
    if existing:
        found = existing[0]
        if found.constitution_hash != constitution.content_hash:
            raise StoreError(f"{round_id} was collected with constitution {found.constitution_hash}; the config's is now "
                             f"{constitution.content_hash}. Refusing to mix them in one collection.")
        if found.status == "failed":
            store.set_round_status(found.round_id, "running", None)
        return found
    policy = store.current_policy()
    assert policy is not None  # the base row was inserted above
    row = RoundRow(round_id=round_id, round_index=rounds[-1].round_index + 1 if rounds else 1, status="running",
                   policy_id=policy.model_id, constitution_hash=constitution.content_hash,
                   seed=stable_int("collect-seed", config.seed, round_id) % 2**31, config_json=config.model_dump(mode="json"))
    store.append([row])
    return row


@task(name="collect replies", cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def collect_replies(ctx: RoundContext) -> SamplingOutcome:
    """Replies that do not come from the policy: an endpoint's (sampler.n per train prompt) or a file's."""
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    tokenizer = load_tokenizer(base_checkpoint(config.policy.path))  # token counts in the policy's terms
    ctx.note("collecting replies")
    if config.collect.source == "file":
        assert config.collect.file is not None
        path = Path(config.collect.file)
        completions = collected_rows(rnd.round_id, file_completions(read_collected_file(path), f"collect:{path.name}", tokenizer),
                                     "file", f"file:{path.name}")
        store.append(completions)
        backend = "file"
    else:
        assert config.collect.openai is not None
        prompts = select_train_prompts(ctx.prompts, config.prompts.train_per_round, rnd.round_index, config.seed)
        sampler = EndpointSampler(config.collect.openai, tokenizer)
        with progress_bar(f"sampling completions ({config.collect.openai.model})") as progress:
            completions = sample_for_round(store, sampler, f"openai:{config.collect.openai.model}", rnd.round_id, prompts,
                                           config.system_prompt(), config.sampler.params(), rnd.seed, "train", progress)
        backend = sampler.backend
    pairs = pair_samples(completions, rnd.round_id)
    store.append(pairs)
    return SamplingOutcome(backend=backend, completions=len(completions), comparisons=len(pairs))


COLLECTED = RoundStage("sampling", SamplingOutcome, collect_replies, lambda w: w.sampling, judges=False)
