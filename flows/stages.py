"""A round's stages: qualify the judge, sample, judge, train, evaluate.

Each stage reads what it needs from the store (the round's row, its config snapshot, earlier
stages' rows), writes its results there, and ends by recording its typed outcome in `stage_runs`.
So a stage can run inside the round's process (models loaded once and shared between stages) or as
a flow run on a Prefect worker that gets nothing but ids: the `rlaif-stage` flow below, deployed
once per work pool (`deploy_stages`) and started by the round with `run_deployment` (`dispatch`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from peft import PeftModel
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from constitution.loader import Constitution, load_constitution
from evals.probes import ProbeSet, load_probe_set
from evals.stage import EvalOutcome, eval_prompts, evaluate, sample_side
from flows.config import RoundConfig
from flows.judging import judge_server, taught_judge, trusted_principles
from flows.policy import candidate_and_parent_samplers, load_lineage, model_sampler
from flows.progress import progress_bar
from flows.train import launch_training
from judges.config import build_judge
from judges.qualification import QualificationGate
from judges.stage import PairwiseJudge, judge_pairs
from judges.stats import judge_stats
from lm.loading import set_threads
from prompts.loader import Prompt, load_prompts, select_heldout_prompts
from review.routing import PairToRoute, route_spot_checks
from sampling.sampler import Sampler, TransformersSampler
from sampling.stage import pair_samples, sample_for_round, select_max_min
from sampling.vllm_engine import choose_backend
from store.db import Store, StoreError
from store.ids import stable_int
from store.location import StoreLocation
from store.rows import CompletionRow, PairRow, RoundRow, Stage, StageRunRow, VerdictRow
from training.candidate import TrainOutcome, train_candidate
from training.data import round_training_data

# Tasks that may talk to a server (vLLM, an OpenAI-compatible judge) retry as a whole after the
# client's own retries are spent; a retry redoes only what the store does not have yet.
NETWORK_RETRIES, NETWORK_RETRY_DELAY_S = 2, 10
STAGE_FLOW = "rlaif-stage"


class SamplingOutcome(BaseModel):
    backend: str
    completions: int
    comparisons: int  # pairs to judge (n > 2: every two samples of a prompt)


class JudgingOutcome(BaseModel):
    judge_id: str
    pairs_judged: int
    consistent_pairs: int
    position_consistency: float | None
    invalid_rate: float | None
    spot_checks_queued: int


OUTCOMES: dict[str, type[BaseModel]] = {"qualify": QualificationGate, "sampling": SamplingOutcome,
                                        "judging": JudgingOutcome, "training": TrainOutcome, "eval": EvalOutcome}


@dataclass
class RoundContext:
    """What every stage of one round works with. The policy, the judge and the trained candidate are
    loaded on first use and kept, so stages that run in one process load each once."""

    store: Store
    config: RoundConfig
    constitution: Constitution
    prompts: list[Prompt]
    rnd: RoundRow
    threads: int
    _loaded: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_round(cls, store: Store, config: RoundConfig, rnd: RoundRow) -> RoundContext:
        return cls(store, config, load_constitution(config.constitution), load_prompts(config.prompts.source), rnd,
                   set_threads(config.runtime.threads))

    def policy(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """(model, tokenizer) of the round's policy."""
        if "policy" not in self._loaded:
            self._loaded["policy"] = load_policy(self.store, self.rnd.policy_id)
        return self._loaded["policy"]

    def judge(self) -> PairwiseJudge:
        """The config's judge, with the worked examples from people the qualify stage chose (if it ran)."""
        if "judge" not in self._loaded:
            gate = self.outcome("qualify")
            self._loaded["judge"] = taught_judge(load_judge(self.config), gate.taught if gate else [])
        return self._loaded["judge"]

    def use_judge(self, judge: PairwiseJudge) -> None:
        self._loaded["judge"] = judge

    def candidate(self, candidate_id: str) -> PeftModel:
        """The round's candidate: as trained in this process, else its adapter loaded onto the policy."""
        if "candidate" not in self._loaded:
            chain = self.store.model_chain(candidate_id)
            self._loaded["candidate"] = PeftModel.from_pretrained(self.policy()[0], chain[-1].path)
        return self._loaded["candidate"]

    def keep_candidate(self, model: PeftModel) -> None:
        self._loaded["candidate"] = model

    def note(self, stage: str) -> None:  # shown to any process the store locks out
        self.store.note(f"round {self.rnd.round_index}: {stage}")

    def outcome(self, stage: Stage) -> Any:
        """The recorded outcome of a finished stage of this round, or None."""
        row = self.store.stage_run(self.rnd.round_id, stage)
        return None if row is None else OUTCOMES[stage].model_validate(row.outcome_json)


# ---- the stages ---------------------------------------------------------------------------------

def qualify_stage(ctx: RoundContext) -> QualificationGate:
    """The judge taught by people, and which model-judged principles its votes count on: by its
    agreement with people where they labelled enough pairs, else by the synthetic qualification
    (each measured once per judge and constitution)."""
    ctx.note("measuring the judge")
    trusted = qualify_judge(ctx.store, ctx.config, ctx.constitution, ctx.judge())
    ctx.use_judge(taught_judge(ctx.judge(), trusted.taught))
    return trusted


def sampling_stage(ctx: RoundContext) -> SamplingOutcome:
    """n completions per train prompt from the round's policy, and the pairs to judge."""
    config, rnd = ctx.config, ctx.rnd
    backend, why = choose_backend(config.sampler.backend, config.sampler.vllm)
    get_run_logger().info("sampling backend: %s (%s)", backend, why)
    ctx.note("sampling")
    prompts = select_train_prompts(ctx.prompts, config.prompts.train_per_round, rnd.round_index, config.seed)
    loaded = ctx.policy() if backend == "transformers" else None
    pairs = sample_pairs(ctx.store, config, rnd, backend, loaded, prompts)
    return SamplingOutcome(backend=backend, completions=len(ctx.store.completions(rnd.round_id, "train")), comparisons=len(pairs))


def judging_stage(ctx: RoundContext) -> JudgingOutcome:
    """Both orders of every pair; n > 2: best vs worst sample of each prompt; spot-checks routed."""
    store, rnd, judge = ctx.store, ctx.rnd, ctx.judge()
    trusted = _needs(ctx, "qualify")
    comparisons = [p for p in store.pairs(rnd.round_id, "train") if p.pairing != "max_min"]
    ctx.note("judging")
    verdicts = judge_round(store, judge, ctx.constitution, comparisons, trusted)
    stats = judge_stats(list(verdicts.values()))
    train_pairs = comparisons
    if ctx.config.sampler.n > 2:  # max_min: the training pair of a prompt is its best vs its worst sample
        train_pairs = select_max_min_pairs(store, rnd, comparisons, verdicts)
        verdicts |= judge_round(store, judge, ctx.constitution, train_pairs, trusted)  # judge cache hits: no new calls
    queued = route_for_review(store, ctx.config, rnd, train_pairs, ctx.prompts, verdicts)
    return JudgingOutcome(judge_id=judge.judge_id, pairs_judged=stats.pairs, consistent_pairs=stats.consistent_pairs,
                          position_consistency=stats.position_consistency, invalid_rate=stats.invalid_rate,
                          spot_checks_queued=queued)


def training_stage(ctx: RoundContext) -> TrainOutcome:
    """The round's trustworthy pairs (human labels first) + mix_rounds earlier ones -> a LoRA candidate.
    The round has already checked judge-human agreement."""
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    judge_id = _needs(ctx, "judging").judge_id
    policy, tokenizer = ctx.policy()
    dataset = round_training_data(store, rnd, judge_id, config.training.mix_rounds, tokenizer, config.system_prompt())
    ctx.note("training")
    outcome, candidate = train(store, config, rnd, policy, tokenizer, dataset, judge_id, ctx.threads)
    if candidate is not None:
        ctx.keep_candidate(candidate)
    return outcome


def eval_stage(ctx: RoundContext) -> EvalOutcome:
    """The candidate vs the round's policy on the held-out and probe prompts: k samples per prompt and
    side, judged in both orders, decided by the gate (more looks with eval.sequential)."""
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    trusted, outcome = _needs(ctx, "qualify"), _needs(ctx, "training")
    candidate, tokenizer = ctx.candidate(outcome.candidate_id), ctx.policy()[1]
    heldout = select_heldout_prompts(ctx.prompts, config.prompts.heldout, config.seed)
    probes = [load_probe_set(source) for source in config.eval.probes]
    backend, _ = choose_backend(config.sampler.backend, config.sampler.vllm)
    ctx.note("evaluating")
    return evaluate_candidate(store, config, rnd, backend, candidate, tokenizer, outcome, ctx.judge(), ctx.constitution,
                              heldout, probes, trusted)


STAGES: dict[str, Callable[[RoundContext], BaseModel]] = {
    "qualify": qualify_stage, "sampling": sampling_stage, "judging": judging_stage, "training": training_stage,
    "eval": eval_stage}


def _needs(ctx: RoundContext, stage: Stage) -> Any:
    found = ctx.outcome(stage)
    if found is None:
        raise StoreError(f"round {ctx.rnd.round_index} has no finished {stage} stage in {ctx.store.name}")
    return found


def run_stage(ctx: RoundContext, stage: Stage) -> Any:
    """Run one stage here (unless an earlier run of the round finished it) and record its outcome."""
    done = ctx.outcome(stage)
    if done is not None:
        return done
    outcome = STAGES[stage](ctx)
    run = FlowRunContext.get()
    ctx.store.append([StageRunRow(
        round_id=ctx.rnd.round_id, stage=stage, outcome_json=outcome.model_dump(mode="json"),
        flow_run_id=None if flow_run.id is None else str(flow_run.id),
        work_pool=run.flow_run.work_pool_name if run is not None and run.flow_run is not None else None,
        host=socket.gethostname(), pid=os.getpid())])
    return outcome


# ---- on Prefect workers -------------------------------------------------------------------------

@flow(name=STAGE_FLOW)
def rlaif_stage(store: StoreLocation, round_id: str, stage: Stage) -> None:
    """One stage of a stored round, on whichever worker picked it up: everything else comes from the store."""
    with Store(store) as db:
        found = [r for r in db.rounds() if r.round_id == round_id]
        if not found:
            raise StoreError(f"{db.name} has no round {round_id}")
        config = RoundConfig.model_validate(found[0].config_json)
        ctx = RoundContext.of_round(db, config, found[0])
        with judge_server(config) if stage in ("qualify", "judging", "eval") else nullcontext():
            run_stage(ctx, stage)


def deploy_stages(config: RoundConfig) -> None:
    """Register (or update) one `rlaif-stage` deployment per work pool the config's workers name."""
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    assert config.workers is not None
    for pool in sorted({config.workers.sampling, config.workers.judging, config.workers.training, config.workers.eval}):
        deployment = rlaif_stage.to_deployment(name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
                                               tags=["rlaif"], description=f"rlaif round stages on work pool {pool}")
        assert isinstance(deployment, RunnerDeployment)  # called outside an event loop: not a coroutine
        try:
            deployment.apply()
        except Exception as exc:  # the API says why (usually: no such work pool)
            raise StoreError(f"cannot deploy the round's stages to work pool {pool!r} ({exc}); start a worker "
                             f"there first: prefect worker start --pool {pool} --type process") from exc


class StageFailed(RuntimeError):
    """A stage's flow run on a worker did not complete."""


def dispatch(ctx: RoundContext, stage: Stage) -> Any:
    """Run a stage: here, or (config.workers) as a flow run on its work pool, passing only ids."""
    workers = ctx.config.workers
    if workers is None:
        return run_stage(ctx, stage)
    done = ctx.outcome(stage)
    if done is not None:
        return done
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    pool = {"qualify": workers.judging, "sampling": workers.sampling, "judging": workers.judging,
            "training": workers.training, "eval": workers.eval}[stage]
    get_run_logger().info("stage %s: dispatched to work pool %s", stage, pool)
    with ctx.store.released():  # a DuckDB file must be free for the worker (a lake is shared anyway)
        run = run_deployment(f"{STAGE_FLOW}/{pool}", parameters={
            "store": ctx.store.location.model_dump(mode="json"), "round_id": ctx.rnd.round_id, "stage": stage},
            timeout=workers.timeout_s, poll_interval=1, flow_run_name=f"{ctx.rnd.round_id}-{stage}")
    assert isinstance(run, FlowRun)  # called outside an event loop: not a coroutine
    if run.state is None or not run.state.is_completed():
        raise StageFailed(f"stage {stage} of round {ctx.rnd.round_index} on work pool {pool}: flow run {run.id} ended "
                          f"{run.state.name if run.state else 'without a state'}: {run.state.message if run.state else ''}")
    return _needs(ctx, stage)


# ---- tasks --------------------------------------------------------------------------------------

def select_train_prompts(prompts: list[Prompt], n: int, round_index: int, seed: int) -> list[Prompt]:
    """Round k takes the k-th window of a fixed shuffle of the train split, so rounds see new prompts."""
    train = sorted((p for p in prompts if p.split == "train"), key=lambda p: stable_int("train-order", seed, p.prompt_id))
    if not train:
        raise ValueError("the prompt source has no train prompts")
    start = (round_index - 1) * n
    return [train[(start + i) % len(train)] for i in range(min(n, len(train)))]


@task(cache_policy=NO_CACHE)
def load_policy(store: Store, model_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_lineage(store, model_id)


@task(cache_policy=NO_CACHE)
def load_judge(config: RoundConfig) -> PairwiseJudge:
    return build_judge(config.judge)


@task(cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def qualify_judge(store: Store, config: RoundConfig, constitution: Constitution, judge: PairwiseJudge) -> QualificationGate:
    """Which model-judged principles this judge's votes count on: its stored qualification for this
    constitution, or a new one measured now (once per judge and constitution)."""
    logger = get_run_logger()
    with progress_bar("measuring the judge") as progress:
        trusted, result, measured = trusted_principles(store, config, constitution, judge, progress)
    if trusted.taught:
        logger.info("judge taught by people: %s", ", ".join(f"{t.principle} (pair {t.pair_id})" for t in trusted.taught))
    if result is not None:
        logger.info("judge qualification %s (set %s): %s", "measured" if measured else "from the store", result.set_hash,
                    ", ".join(f"{pid} {q.sensitivity:.0%}" for pid, q in result.principles.items()) or "nothing testable")
    if trusted.unqualified or trusted.unchecked:
        logger.warning("judge %s: %s", taught_judge(judge, trusted.taught).judge_id, trusted.describe())
    if not trusted.qualified and any(p.judged for p in constitution.principles):
        logger.warning("no model-judged principle qualifies: this round is decided by the executable checks alone")
    return trusted


@task(cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def sample_pairs(store: Store, config: RoundConfig, rnd: RoundRow, backend: str, loaded, prompts: list[Prompt]) -> list[PairRow]:
    """n completions per prompt from the round's policy; returns the comparisons to judge.
    `loaded`: the policy as (model, tokenizer) when the backend is transformers."""
    with model_sampler(store, config, rnd.policy_id, backend, rnd.round_id, loaded) as sampler, \
            progress_bar(f"sampling completions ({backend})") as progress:
        completions = sample_for_round(store, sampler, rnd.policy_id, rnd.round_id, prompts, config.system_prompt(),
                                       config.sampler.params(), rnd.seed, "train", progress)
    pairs = pair_samples(completions, rnd.round_id)
    store.append(pairs)
    return pairs


@task(cache_policy=NO_CACHE)
def select_max_min_pairs(store: Store, rnd: RoundRow, comparisons: list[PairRow], verdicts) -> list[PairRow]:
    winners = {pid: v.winner for pid, v in verdicts.items() if v.status == "ok" and v.consistent}
    completions = store.by_ids(CompletionRow, [c for p in comparisons for c in (p.completion_a, p.completion_b)])
    pairs = select_max_min(comparisons, winners, list(completions.values()), rnd.round_id)
    store.append(pairs)
    return pairs


@task(cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def judge_round(store: Store, judge: PairwiseJudge, constitution: Constitution, pairs: list[PairRow],
                trusted: QualificationGate) -> dict[str, VerdictRow]:
    with progress_bar("judging (both orders)") as progress:
        return judge_pairs(store, judge, constitution, pairs, progress, trusted.uncounted)


@task(cache_policy=NO_CACHE)
def route_for_review(store: Store, config: RoundConfig, rnd: RoundRow, pairs, prompts: list[Prompt], verdicts) -> int:
    tags = {p.prompt_id: p.tags for p in prompts}
    to_route = [PairToRoute(pair_id=p.pair_id, tags=tags.get(p.prompt_id, []), verdict=verdicts[p.pair_id]) for p in pairs]
    routed = route_spot_checks(to_route, config.routing, rnd.round_id, rnd.seed)
    store.append(routed.queue)
    get_run_logger().info("spot-checks: %s", routed.describe(len(pairs)))
    return len(store.review_queue(rnd.round_id))


@task(cache_policy=NO_CACHE)
def train(store: Store, config: RoundConfig, rnd: RoundRow, policy, tokenizer, dataset, judge_id: str,
          threads: int) -> tuple[TrainOutcome, PeftModel | None]:
    launch = None
    if config.training.processes > 1:
        def launch() -> None:  # `rlaif train` under accelerate launch; it needs a DuckDB file to itself
            get_run_logger().info("training on %d processes (accelerate launch)", config.training.processes)
            with store.released():
                log = launch_training(config, rnd.round_index, judge_id, threads)
            get_run_logger().info("distributed training done; log: %s", log)
    with progress_bar("DPO training steps") as progress:
        return train_candidate(store, policy, tokenizer, dataset, config.training.dpo_params(), config.training.data_policy(),
                               rnd.policy_id, rnd.round_id, rnd.round_index, config.artifacts_dir(), rnd.seed, progress,
                               launch)


@task(cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def evaluate_candidate(store: Store, config: RoundConfig, rnd: RoundRow, backend: str, candidate, tokenizer,
                       outcome: TrainOutcome, judge: PairwiseJudge, constitution: Constitution, heldout: list[Prompt],
                       probes: list[ProbeSet], trusted: QualificationGate) -> EvalOutcome:
    """The candidate and the current policy answer the eval prompts with the round's sampling backend,
    the same seeds on both sides: transformers runs the candidate in memory with its adapter on, then
    off; vLLM serves the policy's weights and the candidate's adapter per request, from one engine."""
    candidate_id = outcome.candidate_id
    assert candidate_id is not None  # only a trained candidate is evaluated
    params = config.sampler.params().model_copy(update={"max_new_tokens": config.eval.max_new_tokens})
    if backend == "vllm-server" and len(store.model_chain(rnd.policy_id)) > 1:
        get_run_logger().warning("eval sampling with transformers: a vLLM server serves its base plus one adapter, "
                                 "and this candidate's parent %s has adapters of its own", rnd.policy_id)
        backend = "transformers"
    samplers: AbstractContextManager[tuple[Sampler, Sampler | None]]
    if backend == "transformers":
        samplers = nullcontext((TransformersSampler(candidate, tokenizer), None))
    else:
        samplers = candidate_and_parent_samplers(store, config, candidate_id, backend, f"eval-{rnd.round_id}")
    prompts = eval_prompts(heldout, probes)
    with samplers as (sampler_a, sampler_b):
        def sample_more(first: int, k: int) -> tuple[list[CompletionRow], list[CompletionRow]]:
            with progress_bar(f"eval: sampling {first + 1}-{first + k} ({backend})") as progress:
                side_a = sample_side(store, sampler_a, candidate_id, rnd.round_id, prompts, config.system_prompt(),
                                     params, rnd.seed, first, k, lambda done, total: progress(done, 2 * total))
                with candidate.disable_adapter() if sampler_b is None else nullcontext():  # transformers: adapter off
                    side_b = sample_side(store, sampler_b or sampler_a, rnd.policy_id, rnd.round_id, prompts,
                                         config.system_prompt(), params, rnd.seed, first, k,
                                         lambda done, total: progress(total + done, 2 * total))
            return side_a, side_b

        evaluation = evaluate(store, judge, constitution, rnd.round_id, heldout, probes, sample_more, config.eval.settings(),
                              progress_bar, trusted.uncounted)
    get_run_logger().info("evaluation: %s", evaluation.decision.reason)
    return evaluation
