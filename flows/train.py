"""A round's DPO training as its own command (`rlaif train`), for `accelerate launch` on many GPUs.

    accelerate launch --multi_gpu --num_processes 4 -m flows.cli train --config rlaif.yaml --round 3

Every process reads the round's data from DuckDB read-only and the same plan comes out on each
(same pairs, same ids). Only then does the main process open the file for writing: DuckDB allows
one writer or many readers, never both. The main process stores each step's metrics (reduced over
processes), saves the adapter and records the candidate; a later `rlaif round` finds the candidate
and goes on to evaluate it. The round flow launches this itself when `training.processes` > 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from flows.config import RoundConfig
from flows.policy import load_lineage
from review.agreement import round_agreement
from review.session import queue_progress
from store.db import Store, StoreError
from store.rows import RoundRow, StepMetrics, TrainMetricRow
from training.candidate import TrainOutcome, fit_candidate, plan_candidate, record_candidate, recorded_outcome
from training.data import round_training_data


class TrainRefused(RuntimeError):
    """The round's data may not be trained on (message says why)."""


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
    """Train round `round_index`'s candidate with this process's share of each step; returns the
    outcome on the main process (None on the others). Raises TrainRefused if the data may not train."""
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
            _check_reviews(store, config, rnd, judge_id)
            policy, tokenizer = load_lineage(store, rnd.policy_id)
            dataset = round_training_data(store, rnd, judge_id, config.training.mix_rounds, tokenizer,
                                          config.system_prompt())
            params = config.training.dpo_params()
            plan, refusal = plan_candidate(dataset, params, config.training.data_policy(), rnd.policy_id, rnd.round_id,
                                           config.artifacts_dir(), rnd.seed)
            if refusal is not None:
                raise TrainRefused(refusal.reason)
            assert plan is not None  # plan_candidate returns a plan or a refusal
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

        result, _ = fit_candidate(policy, tokenizer, plan, params, rnd.seed, on_step)
        return record_candidate(writer, plan, result, rnd.policy_id, rnd.round_id, rnd.round_index) if writer else None
    finally:
        if writer is not None:
            writer.close()


def _check_reviews(store: Store, config: RoundConfig, rnd: RoundRow, judge_id: str) -> None:
    """Refuse what the round flow would refuse: unreleased reviews, or a judge the reviewers disagree with."""
    done = queue_progress(store, rnd.round_index, "", config.review.reviews_per_pair)
    if rnd.status == "waiting_for_review" and not rnd.review_released and done.done < done.total:
        raise TrainRefused(f"round {rnd.round_index} is waiting for reviews ({done.done}/{done.total} queued pairs reviewed); "
                           f"review them or `rlaif review release {rnd.round_index}`")
    check = config.review.agreement_check(round_agreement(store, rnd.round_id, judge_id, rnd.constitution_hash))
    if not check.passed:
        raise TrainRefused(check.reason)


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
