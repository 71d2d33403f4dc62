"""One online RLAIF round as a Prefect flow. Read it top to bottom: each line is a stage call.

    sample 2 completions/prompt from the policy -> judge each pair in both orders
    (n > 2: judge every two samples, train on best vs worst) -> route spot-checks -> DPO dataset from
    trustworthy pairs -> LoRA DPO -> candidate vs policy on held-out prompts -> promote only if it wins

Every stage writes to DuckDB under deterministic ids, so rerunning a round (finished or crashed)
continues where it stopped and inserts nothing twice.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from constitution.loader import Constitution, load_constitution
from evals.probes import ProbeSet, load_probe_set
from evals.stage import EvalOutcome, eval_prompts, sample_side, score_head_to_head
from flows.config import RoundConfig
from flows.judging import build_judge, judge_server, refuse_unqualified, trusted_principles
from flows.policy import EMBEDDED_PATH, candidate_and_parent_samplers, load_lineage, model_sampler
from flows.progress import progress_bar
from flows.train import launch_training
from judges.qualification import QualificationGate
from judges.stage import PairwiseJudge, judge_pairs
from judges.stats import judge_stats
from lm.loading import set_threads
from prompts.loader import Prompt, load_prompts, select_heldout_prompts
from review.agreement import AgreementCheck, human_labels, measure_agreement
from review.routing import RoutingCandidate, route_spot_checks
from review.session import progress as review_progress
from sampling.sampler import TransformersSampler
from sampling.stage import pair_samples, sample_for_round, select_max_min
from sampling.vllm_engine import choose_backend
from store.db import Store, StoreError
from store.ids import stable_id, stable_int
from store.rows import CompletionRow, ModelRow, PairRow, PromptRow, RoundRow
from training.stage import TrainOutcome, build_preference_pairs, earlier_preferences, select_preferences, train_candidate

# Tasks that may talk to a server (vLLM, an OpenAI-compatible judge) retry as a whole after the
# client's own retries are spent; a retry redoes only what the store does not have yet.
NETWORK_RETRIES = {"retries": 2, "retry_delay_seconds": 10}


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
    threads = set_threads(config.runtime.threads)
    with Store(config.db_path()) as store:
        rnd = begin_round(store, config, constitution, prompts, round_index)
        if flow_run.id is not None:  # who works on the round: the loop counts its rounds by it, a release resumes it
            store.set_flow_run(rnd.round_id, str(flow_run.id))
        logger.info("round %d (%s): policy %s, constitution %s, %d torch threads",
                    rnd.round_index, rnd.round_id, rnd.policy_id, constitution.content_hash, threads)
        try:
            with judge_server(config):
                summary = run_round(store, config, constitution, prompts, rnd, threads)
        except Pause:  # suspended at the review gate: the status says so; a resumed run starts over
            raise
        except BaseException as exc:
            store.finish_round(rnd.round_id, "failed", f"{type(exc).__name__}: {exc}", {})
            raise
        if summary.status == "waiting_for_review":
            store.set_round_status(rnd.round_id, summary.status, summary.decision)
            logger.warning("round %d is waiting for reviews: %s", rnd.round_index, summary.decision)
            return summary
        store.finish_round(rnd.round_id, "finished", summary.decision, summary.model_dump(mode="json"))
        logger.info("round %d finished: %s", rnd.round_index, summary.decision)
        return summary


def run_round(store: Store, config: RoundConfig, constitution: Constitution, prompts: list[Prompt],
              rnd: RoundRow, threads: int) -> RoundSummary:
    judge = load_judge(config)

    def note(stage: str) -> None:  # shown to any process the store locks out
        store.note(f"round {rnd.round_index}: {stage}")

    note("qualifying the judge")
    trusted = qualify_judge(store, config, constitution, judge)
    refuse_unqualified(config, constitution, trusted)  # judge.require_qualified: before anything is sampled
    policy, tokenizer = load_policy(store, rnd.policy_id)
    train_prompts = select_train_prompts(prompts, config.prompts.train_per_round, rnd.round_index, config.seed)
    heldout = select_heldout_prompts(prompts, config.prompts.heldout, config.seed)
    backend, why = choose_backend(config.sampler.backend, config.sampler.vllm)
    get_run_logger().info("sampling backend: %s (%s)", backend, why)

    note("sampling")
    comparisons = sample_pairs(store, config, rnd, backend, policy, tokenizer, train_prompts)
    note("judging")
    verdicts = judge_round(store, judge, constitution, comparisons, trusted)
    stats = judge_stats(list(verdicts.values()))
    train_pairs = comparisons
    if config.sampler.n > 2:  # max_min: the training pair of a prompt is its best vs its worst sample
        train_pairs = select_max_min_pairs(store, rnd, comparisons, verdicts)
        verdicts |= judge_round(store, judge, constitution, train_pairs, trusted)  # judge cache hits: no new calls
    queued = route_for_review(store, config, rnd, train_pairs, prompts, verdicts)
    so_far = dict(round_index=rnd.round_index, round_id=rnd.round_id, policy_id=rnd.policy_id, judge_id=judge.judge_id,
                  sampling_backend=backend, threads=threads, pairs_judged=stats.pairs, consistent_pairs=stats.consistent_pairs,
                  position_consistency=stats.position_consistency, invalid_rate=stats.invalid_rate, judge_gate=trusted,
                  spot_checks_queued=queued)
    waiting = review_gate(store, config, rnd)
    if waiting is not None:
        return RoundSummary(**so_far, train=TrainOutcome(trained=False, reason=waiting), eval=None, candidate_id=None,
                            promoted=False, decision=waiting, status="waiting_for_review")

    candidates = store.training_candidates(rnd.round_id, judge.judge_id, constitution.content_hash)
    labels = human_labels(store.reviews_of_round(rnd.round_id))
    agreement = judge_human_agreement(store, config, rnd, judge.judge_id, constitution, candidates, labels)
    if agreement.passed:
        records = select_preferences(candidates, labels) + earlier_preferences(store, rnd.round_index, config.training.mix_rounds)
        dataset = build_preference_pairs(records, tokenizer, config.policy.system_prompt)
        note("training")
        outcome, candidate = train(store, config, rnd, policy, tokenizer, dataset, judge.judge_id, threads)
    else:
        outcome, candidate = TrainOutcome(trained=False, reason=agreement.reason), None
    evaluation = None
    if candidate is not None and not outcome.collapsed:
        probes = [load_probe_set(source) for source in config.eval.probes]
        note("evaluating")
        sides = sample_eval(store, config, rnd, backend, candidate, tokenizer, outcome, eval_prompts(heldout, probes))
        evaluation = judge_eval(store, rnd, judge, constitution, heldout, probes, sides, trusted)
    promoted, decision = promote(store, config, outcome, evaluation)

    return RoundSummary(**so_far, agreement=agreement, train=outcome, eval=evaluation, candidate_id=outcome.candidate_id,
                        promoted=promoted, decision=decision)


# ---- round bookkeeping --------------------------------------------------------------------------

def begin_round(store: Store, config: RoundConfig, constitution: Constitution, prompts: list[Prompt],
                round_index: int | None) -> RoundRow:
    """Start round `round_index` (default: resume the last unfinished round, else the next one)."""
    store.append([PromptRow(prompt_id=p.prompt_id, text=p.text, source=p.source, tags=p.tags, split=p.split) for p in prompts])
    base_path = config.policy.path or EMBEDDED_PATH
    store.append([ModelRow(model_id=stable_id("base", base_path), parent_id=None, kind="base", path=base_path,
                           created_round=0, promoted=True, promotion_reason="base model")])
    rounds = store.rounds()
    if round_index is None:
        unfinished = [r for r in rounds if r.status != "finished"]
        round_index = unfinished[-1].round_index if unfinished else (rounds[-1].round_index + 1 if rounds else 1)
    existing = store.round_by_index(round_index)
    if existing is not None:
        if existing.constitution_hash != constitution.content_hash:
            raise StoreError(f"round {round_index} was started with constitution {existing.constitution_hash}; "
                             f"the config's constitution is now {constitution.content_hash}. Refusing to mix them in one round.")
        if existing.status == "failed":  # a rerun after a crash: running again
            store.set_round_status(existing.round_id, "running", None)
        return existing
    policy = store.current_policy()
    assert policy is not None  # the base row was inserted above
    row = RoundRow(round_id=f"round-{round_index:04d}", round_index=round_index, status="running",
                   policy_id=policy.model_id, constitution_hash=constitution.content_hash,
                   seed=stable_int("round-seed", config.seed, round_index) % 2**31,
                   config_json=config.model_dump(mode="json"))
    store.append([row])
    return row


def select_train_prompts(prompts: list[Prompt], n: int, round_index: int, seed: int) -> list[Prompt]:
    """Round k takes the k-th window of a fixed shuffle of the train split, so rounds see new prompts."""
    train = sorted((p for p in prompts if p.split == "train"), key=lambda p: stable_int("train-order", seed, p.prompt_id))
    if not train:
        raise ValueError("the prompt source has no train prompts")
    start = (round_index - 1) * n
    return [train[(start + i) % len(train)] for i in range(min(n, len(train)))]


# ---- tasks --------------------------------------------------------------------------------------

@task(cache_policy=NO_CACHE)
def load_policy(store: Store, model_id: str):
    return load_lineage(store, model_id)


@task(cache_policy=NO_CACHE)
def load_judge(config: RoundConfig) -> PairwiseJudge:
    return build_judge(config)


@task(cache_policy=NO_CACHE, **NETWORK_RETRIES)
def qualify_judge(store: Store, config: RoundConfig, constitution: Constitution, judge: PairwiseJudge) -> QualificationGate:
    """Which model-judged principles this judge's votes count on: its stored qualification for this
    constitution, or a new one measured now (once per judge and constitution)."""
    logger = get_run_logger()
    with progress_bar("qualifying the judge") as progress:
        trusted, result, measured = trusted_principles(store, config, constitution, judge, progress)
    if result is not None:
        logger.info("judge qualification %s (set %s): %s", "measured" if measured else "from the store", result.set_hash,
                    ", ".join(f"{pid} {q.sensitivity:.0%}" for pid, q in result.principles.items()) or "nothing testable")
    if trusted.unqualified:
        logger.warning("judge %s: %s", judge.judge_id, trusted.describe())
    if not trusted.qualified and any(p.judged for p in constitution.principles):
        logger.warning("no model-judged principle qualifies: this round is decided by the executable checks alone")
    return trusted


@task(cache_policy=NO_CACHE, **NETWORK_RETRIES)
def sample_pairs(store: Store, config: RoundConfig, rnd: RoundRow, backend: str, policy, tokenizer,
                 prompts: list[Prompt]) -> list[PairRow]:
    """n completions per prompt from the round's policy; returns the comparisons to judge."""
    with model_sampler(store, config, rnd.policy_id, backend, rnd.round_id, (policy, tokenizer)) as sampler, \
            progress_bar(f"sampling completions ({backend})") as progress:
        completions = sample_for_round(store, sampler, rnd.policy_id, rnd.round_id, prompts, config.policy.system_prompt,
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


@task(cache_policy=NO_CACHE, **NETWORK_RETRIES)
def judge_round(store: Store, judge: PairwiseJudge, constitution: Constitution, pairs, trusted: QualificationGate):
    with progress_bar("judging (both orders)") as progress:
        return judge_pairs(store, judge, constitution, pairs, progress, trusted.uncounted)


@task(cache_policy=NO_CACHE)
def route_for_review(store: Store, config: RoundConfig, rnd: RoundRow, pairs, prompts: list[Prompt], verdicts) -> int:
    tags = {p.prompt_id: p.tags for p in prompts}
    candidates = [RoutingCandidate(pair_id=p.pair_id, tags=tags.get(p.prompt_id, []), verdict=verdicts[p.pair_id]) for p in pairs]
    queue = route_spot_checks(candidates, config.routing, rnd.round_id, rnd.seed)
    store.append(queue)
    return len(store.review_queue(rnd.round_id))


def review_gate(store: Store, config: RoundConfig, rnd: RoundRow) -> str | None:
    """None when training may go on; else why the round waits for its reviews.

    In a deployed flow the run suspends here (Prefect `suspend_flow_run`) until `rlaif review
    release` or the finished queue resumes it; a resumed run starts over, and every stage before
    this one is answered from the store. Outside a deployment, `gate: wait` ends the round as
    waiting_for_review (rerun `rlaif round` once reviewed), and `auto` skips the gate with a warning.
    """
    logger = get_run_logger()
    rnd = store.round_by_index(rnd.round_index) or rnd  # review_released may have changed since begin_round
    done = review_progress(store, rnd.round_index, "", config.review.reviews_per_pair)
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
        release = suspend_flow_run(wait_for_input=ReviewRelease, timeout=config.review.wait_timeout_s,
                                   key=f"review-gate-{rnd.round_id}")
        logger.info("review gate released by %s", release.released_by)
        return None
    return (f"waiting for reviews: {missing}. Review with `rlaif review serve`, then rerun `rlaif round`, "
            f"or `rlaif review release {rnd.round_index}` to train without them")


@task(cache_policy=NO_CACHE)
def judge_human_agreement(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str, constitution: Constitution,
                          candidates, labels) -> AgreementCheck:
    rows = measure_agreement(candidates, labels, rnd.round_id, judge_id, constitution.content_hash)
    store.append(rows)
    check = config.review.agreement_check(rows)
    (get_run_logger().info if check.passed else get_run_logger().warning)("judge-human agreement: %s", check.reason)
    return check


@task(cache_policy=NO_CACHE)
def train(store: Store, config: RoundConfig, rnd: RoundRow, policy, tokenizer, dataset, judge_id: str, threads: int):
    launch = None
    if config.training.processes > 1:
        def launch() -> None:  # `rlaif train` under accelerate launch; it needs the DuckDB file to itself
            get_run_logger().info("training on %d processes (accelerate launch)", config.training.processes)
            with store.released():
                log = launch_training(config, rnd.round_index, judge_id, threads)
            get_run_logger().info("distributed training done; log: %s", log)
    with progress_bar("DPO training steps") as progress:
        return train_candidate(store, policy, tokenizer, dataset, config.training.dpo_params(), config.training.data_policy(),
                               rnd.policy_id, rnd.round_id, rnd.round_index, config.artifacts_dir(), rnd.seed, progress,
                               launch)


@task(cache_policy=NO_CACHE)
def sample_eval(store: Store, config: RoundConfig, rnd: RoundRow, backend: str, candidate, tokenizer, outcome: TrainOutcome,
                prompts: list[Prompt]):
    """The candidate and the current policy answer the eval prompts with the round's sampling backend:
    transformers runs the candidate in memory with its adapter on, then off; vLLM serves the
    policy's weights and the candidate's adapter per request, from one engine."""
    params = config.sampler.params().model_copy(update={"max_new_tokens": config.eval.max_new_tokens})
    if backend == "vllm-server" and len(store.model_chain(rnd.policy_id)) > 1:
        get_run_logger().warning("eval sampling with transformers: a vLLM server serves its base plus one adapter, "
                                 "and this candidate's parent %s has adapters of its own", rnd.policy_id)
        backend = "transformers"
    if backend == "transformers":
        samplers = nullcontext((TransformersSampler(candidate, tokenizer), None))
    else:
        samplers = candidate_and_parent_samplers(store, config, outcome.candidate_id, backend, f"eval-{rnd.round_id}")
    with samplers as (sampler_a, sampler_b), progress_bar(f"eval: sampling ({backend})") as progress:
        side_a = sample_side(store, sampler_a, outcome.candidate_id, rnd.round_id, prompts, config.policy.system_prompt,
                             params, rnd.seed, lambda done, total: progress(done, 2 * total))
        with candidate.disable_adapter() if sampler_b is None else nullcontext():  # transformers: the same model, adapter off
            side_b = sample_side(store, sampler_b or sampler_a, rnd.policy_id, rnd.round_id, prompts,
                                 config.policy.system_prompt, params, rnd.seed, lambda done, total: progress(total + done, 2 * total))
    return side_a, side_b


@task(cache_policy=NO_CACHE, **NETWORK_RETRIES)
def judge_eval(store: Store, rnd: RoundRow, judge: PairwiseJudge, constitution: Constitution, heldout: list[Prompt],
               probes: list[ProbeSet], sides, trusted: QualificationGate) -> EvalOutcome:
    with progress_bar("eval: judging") as progress:
        return score_head_to_head(store, judge, constitution, rnd.round_id, heldout, probes, *sides, progress,
                                  uncounted=trusted.uncounted)


@task(cache_policy=NO_CACHE)
def promote(store: Store, config: RoundConfig, outcome: TrainOutcome, evaluation: EvalOutcome | None) -> tuple[bool, str]:
    """Promote the candidate only if its length-controlled win rate over the current policy clears the bar.

    The signal-trust gates before it (judge-human agreement, the confound audit, the collapse guard)
    stop a round before there is a candidate to evaluate, or mark it never-promotable.
    """
    if outcome.collapsed:
        return False, f"not promoted: {outcome.reason}"
    if outcome.candidate_id is None or evaluation is None:
        return False, f"no candidate: {outcome.reason}"
    bar = config.eval.min_lc_win_rate
    promoted = evaluation.lc_win_rate >= bar
    decision = (f"{'promoted' if promoted else 'not promoted, the current policy stays'}: length-controlled win rate "
                f"{evaluation.lc_win_rate:.2f} {'>=' if promoted else '<'} bar {bar:.2f} (raw {evaluation.win_rate:.2f}, "
                f"95% CI {evaluation.win_rate_low:.2f}-{evaluation.win_rate_high:.2f}, {evaluation.n} held-out prompts)")
    store.set_promotion(outcome.candidate_id, promoted, decision)
    return promoted, decision
