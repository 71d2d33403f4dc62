"""A round's DPO training, orchestrated in one place for the round's training stage and `rlaif train`.

    accelerate launch --multi_gpu --num_processes 4 -m flows.cli train --config rlaif.yaml --round 3

`train_in_round` is the training stage's body: it plans the candidate from the round's trustworthy
pairs, reloads one an earlier run already recorded, and otherwise trains here, or, with
`training.processes` > 1, runs `rlaif train` under `accelerate launch` and reads back what that
recorded. `train_round` is `rlaif train`: in every launched process the same plan comes out (same
pairs, same ids) from a read-only store; only then does the main process open the file for writing
(DuckDB allows one writer or many readers, never both), store each step's metrics (reduced over
processes), save the adapter and record the candidate. Both ask `training_check` first: the one
review gate.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from flows.config import RoundConfig
from flows.policy import load_lineage
from review.agreement import AgreementCheck, round_agreement
from review.session import queue_progress
from store.db import Store, StoreError
from store.rows import AgreementRow, RoundRow, StepMetrics, TrainMetricRow
from training.candidate import CandidatePlan, TrainOutcome, fit_candidate, plan_candidate, record_candidate, recorded_outcome
from training.data import round_training_data
from training.trainer import num_steps


class TrainRefused(RuntimeError):
    """The round's data may not be trained on (message says why)."""


def training_check(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str) -> tuple[AgreementCheck, list[AgreementRow]]:
    """The one check before a round trains: its reviews are done or released, and the judge agrees with
    the reviewers well enough (review.min_kappa, review.min_accuracy). Returns the check and the
    agreement rows it read (the round stores them)."""
    done = queue_progress(store, rnd.round_index, "", config.review.reviews_per_pair)
    if rnd.status == "waiting_for_review" and not rnd.review_released and done.done < done.total:
        return AgreementCheck(passed=False, n=0, accuracy=None, kappa=None,
                              reason=f"round {rnd.round_index} is waiting for reviews ({done.done}/{done.total} queued "
                                     f"pairs reviewed); review them or `rlaif review release {rnd.round_index}`"), []
    rows = round_agreement(store, rnd.round_id, judge_id, rnd.constitution_hash)
    return config.review.agreement_check(rows), rows


def plan_round_candidate(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str,
                         tokenizer: PreTrainedTokenizerBase) -> CandidatePlan | TrainOutcome:
    """The candidate the round's data and config define, or the data policy's refusal."""
    dataset = round_training_data(store, rnd, judge_id, config.training.mix_rounds, tokenizer, config.system_prompt())
    plan, refusal = plan_candidate(dataset, config.training.dpo_params(), config.training.data_policy(), rnd.policy_id,
                                   rnd.round_id, config.artifacts_dir(), rnd.seed)
    if refusal is not None:
        return refusal
    assert plan is not None  # plan_candidate returns a plan or a refusal
    return plan


def train_in_round(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str, policy: PreTrainedModel,
                   tokenizer: PreTrainedTokenizerBase, threads: int, progress: Callable[[int, int], None],
                   log: Callable[[str], None]) -> tuple[TrainOutcome, PeftModel | None]:
    """The round's candidate: (the outcome, the policy with the candidate's adapter; None if not trained)."""
    plan = plan_round_candidate(store, config, rnd, judge_id, tokenizer)
    if isinstance(plan, TrainOutcome):
        return plan, None
    done = recorded_outcome(store, plan)
    if done is None and config.training.processes > 1:
        log(f"training on {config.training.processes} processes (accelerate launch)")
        with store.released():  # the launched processes need the DuckDB file to themselves
            log(f"distributed training done; log: {launch_training(config, rnd.round_index, judge_id, threads)}")
        done = recorded_outcome(store, plan)
        if done is None:
            raise RuntimeError(f"the launched training finished but did not record candidate {plan.candidate_id}")
    if done is not None:  # trained by an earlier run of this round, or by the launched processes
        return done, PeftModel.from_pretrained(policy, plan.adapter_dir)

    params, total = config.training.dpo_params(), num_steps(len(plan.pairs), config.training.dpo_params())
    progress(0, total)

    def on_step(m: StepMetrics) -> None:  # stored at once: a crashed run keeps the steps it finished
        store.append([TrainMetricRow(run_id=plan.run_id, **m.model_dump())])
        progress(m.step + 1, total)

    result, model = fit_candidate(policy, tokenizer, plan, params, rnd.seed, on_step)
    return record_candidate(store, plan, result, rnd.policy_id, rnd.round_id, rnd.round_index), model


def round_judge(store: Store, rnd: RoundRow, judge_id: str | None) -> str:
    """The judge whose verdicts the round trains on: the one that judged it, or `judge_id` if several did."""
    judges = sorted(j for j, chash in store.verdicts_of_round(rnd.round_id) if chash == rnd.constitution_hash)
    if judge_id is not None:
        if judge_id not in judges:
            raise StoreError(f"judge {judge_id} has no verdicts on round {rnd.round_index} (judged by: {', '.join(judges) or 'none'})")
        return judge_id
    if len(judges) != 1:
        raise StoreError(f"round {rnd.round_index} was judged by {len(judges)} judges ({', '.join(judges) or 'none'}): "
                         "pick one with --judge-id")
    return judges[0]


def train_round(config: RoundConfig, round_index: int, judge_id: str | None = None) -> TrainOutcome | None:
    """`rlaif train`: train round `round_index`'s candidate with this process's share of each step;
    returns the outcome on the main process (None on the others). Raises TrainRefused if the data
    may not train."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        return _train_round(state, config, round_index, judge_id)
    finally:
        if torch.distributed.is_initialized():
            # gloo's threads left to interpreter shutdown can abort the process: close the group here.
            torch.distributed.destroy_process_group()


def _train_round(state, config: RoundConfig, round_index: int, judge_id: str | None) -> TrainOutcome | None:
    try:
        with Store(config.store, read_only=True) as store:  # every process reads; nobody writes yet
            rnd = store.round_by_index(round_index)
            if rnd is None:
                raise StoreError(f"{store.name} has no round {round_index}")
            judge_id = round_judge(store, rnd, judge_id)
            check, _ = training_check(store, config, rnd, judge_id)
            if not check.passed:
                raise TrainRefused(check.reason)
            policy, tokenizer = load_lineage(store, rnd.policy_id)
            plan = plan_round_candidate(store, config, rnd, judge_id, tokenizer)
            if isinstance(plan, TrainOutcome):
                raise TrainRefused(plan.reason)
            done = recorded_outcome(store, plan)
    finally:
        state.wait_for_everyone()  # every read-only connection is closed before the writer opens
    if done is not None:
        return done if state.is_main_process else None

    writer = Store(config.store) if state.is_main_process else None
    try:
        def on_step(m: StepMetrics) -> None:  # metrics are already reduced over processes
            if writer is not None:  # stored at once: a crashed run keeps the steps it finished
                writer.append([TrainMetricRow(run_id=plan.run_id, **m.model_dump())])

        result, _ = fit_candidate(policy, tokenizer, plan, config.training.dpo_params(), rnd.seed, on_step)
        return record_candidate(writer, plan, result, rnd.policy_id, rnd.round_id, rnd.round_index) if writer else None
    finally:
        if writer is not None:
            writer.close()


def launch_command(config_file: Path, round_index: int, judge_id: str, processes: int, bf16: bool) -> list[str]:
    """`accelerate launch` of `rlaif train` on `processes` processes (GPUs, or gloo on CPU)."""
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # `--multi_gpu` starts torchrun's processes; without a GPU the Accelerator joins them over gloo
    # (`--cpu` would start a single process unless MPI is set up).
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "bf16" if bf16 else "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "flows.cli", "train", "--config", str(config_file),
            "--round", str(round_index), "--judge-id", judge_id]


def launch_training(config: RoundConfig, round_index: int, judge_id: str, threads: int) -> Path:
    """Run `rlaif train` under `accelerate launch` and wait; returns its log. The caller must have
    released its own DuckDB connection."""
    processes = config.training.processes
    run_dir = config.artifacts_dir() / "launch"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file, log = run_dir / f"train-round-{round_index:04d}.json", run_dir / f"train-round-{round_index:04d}.log"
    # Absolute store paths: the launched processes must open the same files wherever they start.
    absolute = config.model_copy(update={"store": config.store.model_copy(update={
        "path": str(config.store.file.resolve()) if config.store.kind == "duckdb" else None,
        "artifacts_dir": str(config.artifacts_dir().resolve())})})
    config_file.write_text(json.dumps(absolute.model_dump(mode="json"), indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    command = launch_command(config_file, round_index, judge_id, processes, config.training.bf16)
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"`rlaif train` on {processes} processes exited with {done.returncode} (log: {log}):\n{tail}")
    return log
