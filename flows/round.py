"""One online RLAIF round as a Prefect flow. Read it top to bottom: each line is a stage call.

    qualify the judge -> sample 2 completions/prompt from the policy -> judge each pair in both orders
    (n > 2: judge every two samples, train on best vs worst) -> route spot-checks -> review gate ->
    judge-human agreement -> DPO on trustworthy pairs -> candidate vs policy on held-out prompts ->
    promote only if it wins

The stages (flows/stages.py) run in this process, or on Prefect workers (config `workers`), reading
and writing the store under deterministic ids, so rerunning a round (finished or crashed) skips the
stages it finished, continues the one it was in, and inserts nothing twice.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from typing import Literal

import psutil
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from constitution.loader import Constitution, load_constitution
from evals.stage import EvalOutcome
from flows.config import RoundConfig
from flows.judging import judge_server, refuse_unqualified
from flows.policy import EMBEDDED_PATH
from flows.stages import EVAL, JUDGING, QUALIFY, SAMPLING, TRAINING, RoundContext, deploy_stages, dispatch
from flows.tracking import track_round
from flows.train import training_check
from judges.qualification import QualificationGate
from lm.loading import set_threads
from prompts.loader import Prompt, load_prompts
from review.agreement import AgreementCheck
from review.session import queue_progress
from store.db import Store, StoreError
from store.ids import stable_id, stable_int
from store.rows import ModelRow, PromptRow, RoundRow
from training.candidate import TrainOutcome


class RoundSummary(BaseModel):
    round_index: int
    round_id: str
    policy_id: str
    judge_id: str
    sampling_backend: str
    threads: int
    pairs_judged: int
    consistent_pairs: int
    position_consistency: float | None
    invalid_rate: float | None
    judge_gate: QualificationGate = QualificationGate()  # which model-judged principles counted
    spot_checks_queued: int
    agreement: AgreementCheck | None = None
    train: TrainOutcome
    eval: EvalOutcome | None
    candidate_id: str | None
    promoted: bool
    decision: str
    status: Literal["finished", "waiting_for_review"] = "finished"


class ReviewRelease(RunInput):
    """What resumes a round suspended at the review gate (`rlaif review release`, or a finished queue)."""

    released_by: str


@flow(name="rlaif-round")
def rlaif_round(config: RoundConfig, round_index: int | None = None) -> RoundSummary:
    return execute_round(config, round_index)


def execute_round(config: RoundConfig, round_index: int | None = None) -> RoundSummary:
    """One round inside the current flow run: the round flow's body, and each of the loop flow's rounds."""
    logger = get_run_logger()
    constitution = load_constitution(config.constitution)
    prompts = load_prompts(config.prompts.source)
    if config.workers is not None:
        deploy_stages(config)
    with Store(config.store) as store:
        rnd = begin_round(store, config, constitution, prompts, round_index)
        if flow_run.id is not None:  # who works on the round: the loop counts its rounds by it, a release resumes it
            store.set_flow_run(rnd.round_id, str(flow_run.id))
        ctx = RoundContext(store, config, constitution, prompts, rnd, set_threads(config.runtime.threads))
        for note in prompt_shortfalls(config, prompts) + domain_mismatch(config, constitution):
            logger.warning(note)
        logger.info("round %d (%s): policy %s, constitution %s, %d torch threads, stages %s",
                    rnd.round_index, rnd.round_id, rnd.policy_id, constitution.content_hash, ctx.threads,
                    "in this process" if config.workers is None else "on Prefect workers")
        try:
            # with workers, each stage that judges starts the judge server where it runs
            with stop_on_sigterm(rnd.round_index), judge_server(config) if config.workers is None else nullcontext():
                summary = run_round(ctx)
        except Pause:  # suspended at the review gate: the status says so; a resumed run starts over
            raise
        except BaseException as exc:
            store.finish_round(rnd.round_id, "failed", f"{type(exc).__name__}: {exc}", {})
            raise
        if summary.status == "waiting_for_review":
            store.set_round_status(rnd.round_id, summary.status, summary.decision)
            logger.warning("round %d is waiting for reviews: %s", rnd.round_index, summary.decision)
            return summary
        store.finish_round(rnd.round_id, "finished", summary.decision, summary.model_dump(mode="json"), summary.candidate_id,
                           summary.train.run_id)
        logger.info("round %d finished: %s", rnd.round_index, summary.decision)
        if config.tracking.enabled:
            track_finished_round(store, config, rnd)
        return summary


def run_round(ctx: RoundContext) -> RoundSummary:
    store, config, rnd = ctx.store, ctx.config, ctx.rnd
    trusted = dispatch(ctx, QUALIFY)
    refuse_unqualified(config, ctx.constitution, trusted)  # judge.require_qualified: before anything is sampled
    sampled = dispatch(ctx, SAMPLING)
    judged = dispatch(ctx, JUDGING)
    store.set_round_judge(rnd.round_id, judged.judge_id)
    so_far = dict(round_index=rnd.round_index, round_id=rnd.round_id, policy_id=rnd.policy_id, judge_id=judged.judge_id,
                  sampling_backend=sampled.backend, threads=ctx.threads, pairs_judged=judged.pairs_judged,
                  consistent_pairs=judged.consistent_pairs, position_consistency=judged.position_consistency,
                  invalid_rate=judged.invalid_rate, judge_gate=trusted, spot_checks_queued=judged.spot_checks_queued)
    waiting = review_gate(store, config, rnd)
    if waiting is not None:
        return RoundSummary(**so_far, train=TrainOutcome(trained=False, reason=waiting), eval=None, candidate_id=None,
                            promoted=False, decision=waiting, status="waiting_for_review")

    agreement = judge_human_agreement(store, config, rnd, judged.judge_id)
    outcome = dispatch(ctx, TRAINING) if agreement.passed else TrainOutcome(trained=False, reason=agreement.reason)
    evaluation = dispatch(ctx, EVAL) if outcome.candidate_id is not None and not outcome.collapsed else None
    promoted, decision = promote(store, outcome, evaluation)

    return RoundSummary(**so_far, agreement=agreement, train=outcome, eval=evaluation, candidate_id=outcome.candidate_id,
                        promoted=promoted, decision=decision)


# ---- round bookkeeping --------------------------------------------------------------------------

@contextmanager
def stop_on_sigterm(round_index: int) -> Iterator[None]:
    """SIGTERM (a service manager, `kill`, a cancelled deployment) stops the round at once, as a kill
    would: what the round committed stays in the store, the round stays "running", and `rlaif round`
    resumes it. It says so in one line; the processes it started (vLLM engines, a judge server,
    Prefect's temporary server) are killed with it. Replaces Prefect's handler, which unwinds the
    whole flow (minutes, and a traceback) before the process exits."""
    def stop(signum: int, frame: object) -> None:
        print(f"rlaif: stopped by SIGTERM in round {round_index}; what it stored is kept, and `rlaif round` resumes it",
              file=sys.stderr, flush=True)
        for child in psutil.Process().children(recursive=True):
            with suppress(psutil.Error):
                child.kill()
        os._exit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def track_finished_round(store: Store, config: RoundConfig, rnd: RoundRow) -> None:
    """The finished round's metrics to TensorBoard / MLflow (config `tracking`). The round is done and
    stored whatever happens here: a tracker that fails is a warning, and `rlaif track N` logs it again."""
    logger = get_run_logger()
    try:
        track_round(store, config.tracking, rnd.round_id)
    except Exception as exc:  # an unreachable tracking server must not fail a finished round
        logger.warning("round %d: tracking failed (%s: %s); `rlaif track %d` logs it again",
                       rnd.round_index, type(exc).__name__, exc, rnd.round_index)
        return
    logger.info("round %d tracked: %s", rnd.round_index, ", ".join(
        f"{name} {where}" for name, where in (("MLflow", config.tracking.mlflow), ("TensorBoard", config.tracking.tensorboard)) if where))


def domain_mismatch(config: RoundConfig, constitution: Constitution) -> list[str]:
    """A policy told it is another domain's agent: the bundled support task's system message with
    another constitution, or a constitution with no system message of its own."""
    support = load_constitution("bundled:support")
    if constitution.name != support.name and config.system_prompt() == support.system_prompt:
        return [f"the policy's system message is the bundled support task's, but the constitution is {constitution.name!r}: "
                "give the domain its own (the constitution's system_prompt, or policy.system_prompt)"]
    if not config.policy.system_prompt and not constitution.system_prompt:
        return [f"constitution {constitution.name!r} has no system_prompt and policy.system_prompt is empty: the policy "
                "gets a generic one"]
    return []


def prompt_shortfalls(config: RoundConfig, prompts: list[Prompt]) -> list[str]:
    """What the round will do differently because the prompt file has fewer prompts than the config asks for."""
    train = sum(p.split == "train" for p in prompts)
    heldout = sum(p.split == "heldout" for p in prompts)
    notes = []
    if train < config.prompts.train_per_round:
        notes.append(f"prompts.train_per_round is {config.prompts.train_per_round} but {config.prompts.source} has {train} "
                     f"train prompts: every round samples all {train}, the same ones each round")
    if heldout < config.prompts.heldout:
        notes.append(f"prompts.heldout is {config.prompts.heldout} but {config.prompts.source} has {heldout} held-out "
                     f"prompts: the candidate is evaluated on those {heldout}")
    if heldout < config.judge.qualification_prompts and config.judge.qualify:
        notes.append(f"judge.qualification_prompts is {config.judge.qualification_prompts} but there are {heldout} "
                     f"held-out prompts: the judge's qualification is built from those {heldout}")
    return notes


def store_inputs(store: Store, config: RoundConfig, prompts: list[Prompt]) -> None:
    """The prompts and the base model, stored once (a rerun inserts nothing)."""
    store.append([PromptRow(prompt_id=p.prompt_id, text=p.text, source=p.source, tags=p.tags, split=p.split) for p in prompts])
    base_path = config.policy.path or EMBEDDED_PATH
    store.append([ModelRow(model_id=stable_id("base", base_path), parent_id=None, kind="base", path=base_path,
                           created_round=0, promoted=True, promotion_reason="base model")])


def begin_round(store: Store, config: RoundConfig, constitution: Constitution, prompts: list[Prompt],
                round_index: int | None) -> RoundRow:
    """Start round `round_index` (default: resume the last unfinished round, else the next one)."""
    store_inputs(store, config, prompts)
    rounds = store.rounds()
    if round_index is None:
        unfinished = [r for r in rounds if r.status != "finished" and r.kind == "round"]  # `rlaif collect` resumes its own
        round_index = unfinished[-1].round_index if unfinished else (rounds[-1].round_index + 1 if rounds else 1)
    existing = store.round_by_index(round_index)
    if existing is not None:
        if existing.kind != "round":
            raise StoreError(f"round {round_index} is a collection ({existing.round_id}): `rlaif collect` resumes it")
        if existing.constitution_hash != constitution.content_hash:
            raise StoreError(f"round {round_index} was started with constitution {existing.constitution_hash}; "
                             f"the config's constitution is now {constitution.content_hash}. Refusing to mix them in one round.")
        if existing.status == "failed":  # a rerun after a crash: running again
            store.set_round_status(existing.round_id, "running", None)
        # The snapshot is the config of the round's latest run: stages on workers read it from there,
        # so they work with the config this run was given, as stages in this process do.
        config_json = config.model_dump(mode="json")
        if existing.config_json != config_json:
            store.set_round_config(existing.round_id, config_json)
            return existing.model_copy(update={"config_json": config_json})
        return existing
    policy = store.current_policy()
    assert policy is not None  # the base row was inserted above
    row = RoundRow(round_id=f"round-{round_index:04d}", round_index=round_index, status="running",
                   policy_id=policy.model_id, constitution_hash=constitution.content_hash,
                   seed=stable_int("round-seed", config.seed, round_index) % 2**31,
                   config_json=config.model_dump(mode="json"))
    store.append([row])
    return row


def review_gate(store: Store, config: RoundConfig, rnd: RoundRow) -> str | None:
    """None when training may go on; else why the round waits for its reviews.

    In a deployed flow the run suspends here (Prefect `suspend_flow_run`) until `rlaif review
    release` or the finished queue resumes it; a resumed run starts over, and every stage before
    this one is answered from the store. Outside a deployment, `gate: wait` ends the round as
    waiting_for_review (rerun `rlaif round` once reviewed), and `auto` skips the gate with a warning.
    """
    logger = get_run_logger()
    rnd = store.round_by_index(rnd.round_index) or rnd  # review_released may have changed since begin_round
    done = queue_progress(store, rnd.round_index, "", config.review.reviews_per_pair)
    if done.total == 0 or done.done == done.total or rnd.review_released:
        return None
    missing = f"{done.done}/{done.total} queued pairs reviewed"
    deployed = deployment.id is not None
    if config.review.gate == "skip" or (config.review.gate == "auto" and not deployed):
        logger.warning("review gate skipped (review.gate %s, %s): only %s; training goes on with the judge's "
                       "verdicts for the rest", config.review.gate, "deployed" if deployed else "not a deployed run", missing)
        return None
    if deployed:  # execute_round recorded this flow run on the round: `rlaif review release` resumes it
        store.set_round_status(rnd.round_id, "waiting_for_review", missing)
        logger.info("round %d suspends until its reviews are done (%s) or `rlaif review release %d`",
                    rnd.round_index, missing, rnd.round_index)
        # the file is let go before Prefect marks the run Suspended, so a release never finds it locked
        with store.released(stay_closed_on=(Pause,)):
            release = suspend_flow_run(wait_for_input=ReviewRelease, timeout=config.review.wait_timeout_s,
                                       key=f"review-gate-{rnd.round_id}")
        logger.info("review gate released by %s", release.released_by)
        return None
    return (f"waiting for reviews: {missing}. Review with `rlaif review serve`, then rerun `rlaif round`, "
            f"or `rlaif review release {rnd.round_index}` to train without them")


@task(cache_policy=NO_CACHE)
def judge_human_agreement(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str) -> AgreementCheck:
    """People's labels (the majority of each reviewed pair) vs the judge's verdicts, stored; under the
    bars, no training (flows/train.py training_check: the one gate, which `rlaif train` asks too)."""
    check, rows = training_check(store, config, rnd, judge_id)
    store.append(rows)
    (get_run_logger().info if check.passed else get_run_logger().warning)("judge-human agreement: %s", check.reason)
    return check


@task(cache_policy=NO_CACHE)
def promote(store: Store, outcome: TrainOutcome, evaluation: EvalOutcome | None) -> tuple[bool, str]:
    """Promote the candidate only if the evaluation's gate says so: the lower end of its length-controlled
    win rate's interval clears 0.5 + eval.margin and no executable check vetoes it (evals/decision.py).

    The signal-trust gates before it (judge-human agreement, the confound audit, the collapse guard)
    stop a round before there is a candidate to evaluate, or mark it never-promotable.
    """
    if outcome.collapsed:
        return False, f"not promoted: {outcome.reason}"
    if outcome.candidate_id is None or evaluation is None:
        return False, f"no candidate: {outcome.reason}"
    promoted = evaluation.decision.verdict == "promote"
    store.set_promotion(outcome.candidate_id, promoted, evaluation.decision.reason)
    return promoted, evaluation.decision.reason
