"""A round's stages: measure the judge, sample, judge, train, evaluate.

A stage is one Prefect task, `stage(ctx) -> Outcome`: it reads what it needs from the store (the
round's row, its config snapshot, earlier stages' outcomes), calls the stage library, writes its
results there, and returns its typed outcome, which `run_stage` records in `stage_runs`. So a stage
runs inside the round's process (models loaded once and shared between stages) or as a flow run on
a Prefect worker that gets nothing but ids: the `rlaif-stage` flow below, deployed once per work
pool (`deploy_stages`) and started by the round with `run_deployment` (`dispatch`). `RoundStage`
ties a stage's task to its outcome's type and its work pool, so dispatch is typed end to end.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from peft import PeftModel
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from constitution.loader import Constitution, load_constitution
from evals.probes import load_probe_set
from evals.stage import EvalOutcome, eval_prompts, evaluate, sample_side
from flows.config import RoundConfig, WorkersConfig
from flows.judging import judge_server, taught_judge, trusted_principles
from flows.policy import candidate_and_parent_samplers, load_lineage, model_sampler
from flows.progress import progress_bar
from flows.train import train_in_round
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
from store.rows import CompletionRow, RoundRow, Stage, StageRunRow
from training.candidate import TrainOutcome

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


Out = TypeVar("Out", bound=BaseModel)  # a stage's outcome


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
    _policy: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None
    _judge: PairwiseJudge | None = None
    _candidate: PeftModel | None = None

    @classmethod
    def of_round(cls, store: Store, config: RoundConfig, rnd: RoundRow) -> RoundContext:
        return cls(store, config, load_constitution(config.constitution), load_prompts(config.prompts.source), rnd,
                   set_threads(config.runtime.threads))

    def policy(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """(model, tokenizer) of the round's policy."""
        if self._policy is None:
            self._policy = load_policy(self.store, self.rnd.policy_id)
        return self._policy

    def judge(self) -> PairwiseJudge:
        """The config's judge, with the worked examples from people the qualify stage chose (if it ran)."""
        if self._judge is None:
            gate = self.outcome(QUALIFY)
            self._judge = taught_judge(load_judge(self.config), gate.taught if gate else [])
        return self._judge

    def use_judge(self, judge: PairwiseJudge) -> None:
        self._judge = judge

    def candidate(self, candidate_id: str) -> PeftModel:
        """The round's candidate: as trained in this process, else its adapter loaded onto the policy."""
        if self._candidate is None:
            chain = self.store.model_chain(candidate_id)
            self._candidate = PeftModel.from_pretrained(self.policy()[0], chain[-1].path)
        return self._candidate

    def keep_candidate(self, model: PeftModel) -> None:
        self._candidate = model

    def note(self, stage: str) -> None:  # shown to any process the store locks out
        self.store.note(f"round {self.rnd.round_index}: {stage}")

    def outcome(self, stage: RoundStage[Out]) -> Out | None:
        """The recorded outcome of a finished stage of this round, or None."""
        row = self.store.stage_run(self.rnd.round_id, stage.name)
        return None if row is None else stage.outcome.model_validate(row.outcome_json)

    def needs(self, stage: RoundStage[Out]) -> Out:
        """The outcome of an earlier stage this one depends on (it must have finished)."""
        found = self.outcome(stage)
        if found is None:
            raise StoreError(f"round {self.rnd.round_index} has no finished {stage.name} stage in {self.store.name}")
        return found


# ---- the stages ---------------------------------------------------------------------------------

@task(name="measure the judge", cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def qualify(ctx: RoundContext) -> QualificationGate:
    """The judge taught by people, and which model-judged principles its votes count on: by its
    agreement with people where they labelled enough pairs, else by the synthetic qualification
    (each measured once per judge and constitution)."""
    logger = get_run_logger()
    ctx.note("measuring the judge")
    base = ctx.judge()
    with progress_bar("measuring the judge") as progress:
        trusted, result, measured = trusted_principles(ctx.store, ctx.config, ctx.constitution, base, progress)
    ctx.use_judge(taught_judge(base, trusted.taught))
    if trusted.taught:
        logger.info("judge taught by people: %s", ", ".join(f"{t.principle} (pair {t.pair_id})" for t in trusted.taught))
    if result is not None:
        logger.info("judge qualification %s (set %s): %s", "measured" if measured else "from the store", result.set_hash,
                    ", ".join(f"{pid} {q.sensitivity:.0%}" for pid, q in result.principles.items()) or "nothing testable")
    if trusted.unqualified or trusted.unchecked:
        logger.warning("judge %s: %s", ctx.judge().judge_id, trusted.describe())
    if not trusted.qualified and any(p.judged for p in ctx.constitution.principles):
        logger.warning("no model-judged principle qualifies: this round is decided by the executable checks alone")
    return trusted


@task(name="sample", cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def sample(ctx: RoundContext) -> SamplingOutcome:
    """n completions per train prompt from the round's policy, and the pairs to judge."""
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    backend, why = choose_backend(config.sampler.backend, config.sampler.vllm)
    get_run_logger().info("sampling backend: %s (%s)", backend, why)
    ctx.note("sampling")
    prompts = select_train_prompts(ctx.prompts, config.prompts.train_per_round, rnd.round_index, config.seed)
    loaded = ctx.policy() if backend == "transformers" else None
    with model_sampler(store, config, rnd.policy_id, backend, rnd.round_id, loaded) as sampler, \
            progress_bar(f"sampling completions ({backend})") as progress:
        completions = sample_for_round(store, sampler, rnd.policy_id, rnd.round_id, prompts, config.system_prompt(),
                                       config.sampler.params(), rnd.seed, "train", progress)
    pairs = pair_samples(completions, rnd.round_id)
    store.append(pairs)
    return SamplingOutcome(backend=backend, completions=len(store.completions(rnd.round_id, "train")), comparisons=len(pairs))


@task(name="judge", cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def judge(ctx: RoundContext) -> JudgingOutcome:
    """Both orders of every pair; n > 2: best vs worst sample of each prompt; spot-checks routed."""
    store, config, rnd, judge_ = ctx.store, ctx.config, ctx.rnd, ctx.judge()
    uncounted = ctx.needs(QUALIFY).uncounted
    comparisons = [p for p in store.pairs(rnd.round_id, "train") if p.pairing != "max_min"]
    ctx.note("judging")
    with progress_bar("judging (both orders)") as progress:
        verdicts = judge_pairs(store, judge_, ctx.constitution, comparisons, progress, uncounted)
    stats = judge_stats(list(verdicts.values()))
    train_pairs = comparisons
    if config.sampler.n > 2:  # max_min: the training pair of a prompt is its best vs its worst sample
        winners = {pid: v.winner for pid, v in verdicts.items() if v.status == "ok" and v.consistent}
        completions = store.by_ids(CompletionRow, [c for p in comparisons for c in (p.completion_a, p.completion_b)])
        train_pairs = select_max_min(comparisons, winners, list(completions.values()), rnd.round_id)
        store.append(train_pairs)
        verdicts |= judge_pairs(store, judge_, ctx.constitution, train_pairs, uncounted=uncounted)  # cache hits: no new calls
    tags = {p.prompt_id: p.tags for p in ctx.prompts}
    routed = route_spot_checks([PairToRoute(pair_id=p.pair_id, tags=tags.get(p.prompt_id, []), verdict=verdicts[p.pair_id])
                                for p in train_pairs], config.routing, rnd.round_id, rnd.seed)
    store.append(routed.queue)
    get_run_logger().info("spot-checks: %s", routed.describe(len(train_pairs)))
    return JudgingOutcome(judge_id=judge_.judge_id, pairs_judged=stats.pairs, consistent_pairs=stats.consistent_pairs,
                          position_consistency=stats.position_consistency, invalid_rate=stats.invalid_rate,
                          spot_checks_queued=len(store.review_queue(rnd.round_id)))


@task(name="train", cache_policy=NO_CACHE)
def train(ctx: RoundContext) -> TrainOutcome:
    """The round's trustworthy pairs (people's labels first) + mix_rounds earlier ones -> a LoRA candidate
    (flows/train.py). The round has already checked its reviews and the judge's agreement with them."""
    logger = get_run_logger()
    policy, tokenizer = ctx.policy()
    ctx.note("training")
    with progress_bar("DPO training steps") as progress:
        outcome, candidate = train_in_round(ctx.store, ctx.config, ctx.rnd, ctx.needs(JUDGING).judge_id, policy, tokenizer,
                                            ctx.threads, progress, logger.info)
    if candidate is not None:
        ctx.keep_candidate(candidate)
    return outcome


@task(name="evaluate", cache_policy=NO_CACHE, retries=NETWORK_RETRIES, retry_delay_seconds=NETWORK_RETRY_DELAY_S)
def evaluate_candidate(ctx: RoundContext) -> EvalOutcome:
    """The candidate vs the round's policy on the held-out and probe prompts: k samples per prompt and
    side with the same seeds on both sides, judged in both orders, decided by the gate (more looks
    with eval.sequential). transformers runs the candidate in memory with its adapter on, then off;
    vLLM serves the policy's weights and the candidate's adapter per request, from one engine."""
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    uncounted, candidate_id = ctx.needs(QUALIFY).uncounted, ctx.needs(TRAINING).candidate_id
    assert candidate_id is not None  # only a trained candidate is evaluated
    candidate, tokenizer = ctx.candidate(candidate_id), ctx.policy()[1]
    heldout = select_heldout_prompts(ctx.prompts, config.prompts.heldout, config.seed)
    probes = [load_probe_set(source) for source in config.eval.probes]
    backend, _ = choose_backend(config.sampler.backend, config.sampler.vllm)
    ctx.note("evaluating")
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

        evaluation = evaluate(store, ctx.judge(), ctx.constitution, rnd.round_id, heldout, probes, sample_more,
                              config.eval.settings(), progress_bar, uncounted)
    get_run_logger().info("evaluation: %s", evaluation.decision.reason)
    return evaluation


@dataclass(frozen=True)
class RoundStage(Generic[Out]):
    """A stage of the round: its name (the key of its `stage_runs` row), its outcome's type, the task
    that runs it, and which of `workers`' pools runs it on Prefect workers."""

    name: Stage
    outcome: type[Out]
    run: Callable[[RoundContext], Out]
    pool: Callable[[WorkersConfig], str]
    judges: bool  # it talks to the judge: on a worker, the judge's server is started for it


QUALIFY = RoundStage("qualify", QualificationGate, qualify, lambda w: w.judging, judges=True)
SAMPLING = RoundStage("sampling", SamplingOutcome, sample, lambda w: w.sampling, judges=False)
JUDGING = RoundStage("judging", JudgingOutcome, judge, lambda w: w.judging, judges=True)
TRAINING = RoundStage("training", TrainOutcome, train, lambda w: w.training, judges=False)
EVAL = RoundStage("eval", EvalOutcome, evaluate_candidate, lambda w: w.eval, judges=True)
STAGES: tuple[RoundStage[Any], ...] = (QUALIFY, SAMPLING, JUDGING, TRAINING, EVAL)  # by name: for the worker's flow


def run_stage(ctx: RoundContext, stage: RoundStage[Out]) -> Out:
    """Run one stage here (unless an earlier run of the round finished it) and record its outcome."""
    done = ctx.outcome(stage)
    if done is not None:
        return done
    outcome = stage.run(ctx)
    run = FlowRunContext.get()
    ctx.store.append([StageRunRow(
        round_id=ctx.rnd.round_id, stage=stage.name, outcome_json=outcome.model_dump(mode="json"),
        flow_run_id=None if flow_run.id is None else str(flow_run.id),
        work_pool=run.flow_run.work_pool_name if run is not None and run.flow_run is not None else None,
        host=socket.gethostname(), pid=os.getpid())])
    return outcome


# ---- on Prefect workers -------------------------------------------------------------------------

@flow(name=STAGE_FLOW)
def rlaif_stage(store: StoreLocation, round_id: str, stage: Stage) -> None:
    """One stage of a stored round, on whichever worker picked it up: everything else comes from the store."""
    (spec,) = [s for s in STAGES if s.name == stage]
    with Store(store) as db:
        found = [r for r in db.rounds() if r.round_id == round_id]
        if not found:
            raise StoreError(f"{db.name} has no round {round_id}")
        config = RoundConfig.model_validate(found[0].config_json)
        ctx = RoundContext.of_round(db, config, found[0])
        with judge_server(config) if spec.judges else nullcontext():
            run_stage(ctx, spec)


def deploy_stages(config: RoundConfig) -> None:
    """Register (or update) one `rlaif-stage` deployment per work pool the config's workers name."""
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    workers = config.workers
    assert workers is not None
    for pool in sorted({stage.pool(workers) for stage in STAGES}):
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


def dispatch(ctx: RoundContext, stage: RoundStage[Out]) -> Out:
    """Run a stage: here, or (config.workers) as a flow run on its work pool, passing only ids."""
    workers = ctx.config.workers
    if workers is None:
        return run_stage(ctx, stage)
    done = ctx.outcome(stage)
    if done is not None:
        return done
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    pool = stage.pool(workers)
    get_run_logger().info("stage %s: dispatched to work pool %s", stage.name, pool)
    with ctx.store.released():  # a DuckDB file must be free for the worker (a lake is shared anyway)
        run = run_deployment(f"{STAGE_FLOW}/{pool}", parameters={
            "store": ctx.store.location.model_dump(mode="json"), "round_id": ctx.rnd.round_id, "stage": stage.name},
            timeout=workers.timeout_s, poll_interval=1, flow_run_name=f"{ctx.rnd.round_id}-{stage.name}")
    assert isinstance(run, FlowRun)  # called outside an event loop: not a coroutine
    if run.state is None or not run.state.is_completed():
        raise StageFailed(f"stage {stage.name} of round {ctx.rnd.round_index} on work pool {pool}: flow run {run.id} ended "
                          f"{run.state.name if run.state else 'without a state'}: {run.state.message if run.state else ''}")
    return ctx.needs(stage)


# ---- helpers ------------------------------------------------------------------------------------

def select_train_prompts(prompts: list[Prompt], n: int, round_index: int, seed: int) -> list[Prompt]:
    """Round k takes the k-th window of a fixed shuffle of the train split, so rounds see new prompts."""
    train_split = sorted((p for p in prompts if p.split == "train"), key=lambda p: stable_int("train-order", seed, p.prompt_id))
    if not train_split:
        raise ValueError("the prompt source has no train prompts")
    start = (round_index - 1) * n
    return [train_split[(start + i) % len(train_split)] for i in range(min(n, len(train_split)))]


@task(cache_policy=NO_CACHE)
def load_policy(store: Store, model_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_lineage(store, model_id)


@task(cache_policy=NO_CACHE)
def load_judge(config: RoundConfig) -> PairwiseJudge:
    return build_judge(config.judge)
