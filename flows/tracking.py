"""Experiment tracking: a finished round's metrics, read back from the store, logged to TensorBoard and
MLflow (config `tracking`, off by default).

The store stays the record; a tracker gets a copy of what it holds for the round, so a round can be
(re)logged at any time (`rlaif track N`), and what the tracker shows equals what `rlaif status` and
`rlaif report` read:

- per training step (step = the trainer's step): `train/loss`, `train/reward_chosen`,
  `train/reward_rejected`, `train/reward_margin`, `train/reward_accuracy`, `train/grad_norm`,
  `train/lr`, `train/tokens_per_s` (the `train_metrics` rows of the round's train run);
- per round (step = the round's index): `round/*` from the round's summary (pairs judged, position
  consistency, invalid rate, spot-checks, principles counted, training pairs, first and last loss,
  trained, promoted as 0/1), `agreement/*` the judge against people (accuracy, kappa with its
  interval, per principle and tag), `eval/*` every `evals` row of the candidate against the policy
  (raw, length-controlled and plain LC win rates with `_low`/`_high`, judge consistency, pass rates
  and their differences, the gate's `promoted`), a `:` of the row's name written as `/`;
- params: the round's ids (round, policy, judge, candidate, train run, constitution hash, store)
  and its config snapshot flattened (`config.training.beta`, ...; not `store` or `tracking`, whose
  catalog or URI may hold a password); tags: the decision in words.

MLflow: one run per (store, round) in `tracking.experiment`, named after the round and tagged
`rlaif.round_id`, `rlaif.store` and `rlaif.key`; logging a round again replaces its run (the old one
is deleted), so reruns never leave two. TensorBoard: `<tracking.tensorboard>/<round id>`, whose
earlier event files are removed first, for the same reason.

The only module that imports mlflow or tensorboard, lazily: both come with the optional extra
`pip install 'rlaif[tracking]'`, and the base install runs without them.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from lm.batching import chunks
from store.db import Store
from store.ids import stable_id
from store.rows import RoundRow, StepMetrics

if TYPE_CHECKING:
    from flows.config import TrackingConfig

INSTALL_HINT = "pip install 'rlaif[tracking]'"
KEY_TAG = "rlaif.key"  # one MLflow run per (store, round): what a rerun finds and replaces
STEP_FIELDS = [name for name in StepMetrics.model_fields if name != "step"]
_TAG_LIMIT = 8000  # MLflow's longest tag value


class TrackingError(RuntimeError):
    """Tracking is configured but cannot be done: a package is missing, or the round is not finished."""


class Scalar(BaseModel):
    name: str
    step: int
    value: float


class TrackedRound(BaseModel):
    """What the store holds for one finished round, as a tracker sees it."""

    round_id: str
    round_index: int
    key: str
    store: str
    started_at: datetime
    finished_at: datetime | None
    scalars: list[Scalar]
    params: dict[str, str]
    tags: dict[str, str]
    decision: str


def require_packages(config: TrackingConfig) -> None:
    """Fail before a round starts when its tracking config names a package that is not installed."""
    for wanted, module in ((config.mlflow, "mlflow"), (config.tensorboard, "tensorboard")):
        if wanted:
            _import(module)


def metric_name(prefix: str, name: str) -> str:
    """An MLflow- and TensorBoard-safe name: `pass:short:candidate` -> `eval/pass/short/candidate`."""
    safe = re.sub(r"[^\w.\- /]", "_", name.replace(":", "/"))
    return f"{prefix}/" + "/".join(part if part not in ("", ".", "..") else "_" for part in safe.split("/"))


def tracked_round(store: Store, round_id: str) -> TrackedRound:
    """Read what the store holds for the finished round `round_id`."""
    rnd = store.by_ids(RoundRow, [round_id]).get(round_id)
    if rnd is None:
        raise TrackingError(f"{store.name} has no round {round_id}")
    if rnd.status != "finished":
        raise TrackingError(f"round {rnd.round_index} is {rnd.status}, not finished: only a finished round is tracked")
    summary: dict[str, Any] = rnd.summary_json or {}
    train: dict[str, Any] = summary.get("train") or {}
    gate: dict[str, Any] = summary.get("judge_gate") or {}
    index = rnd.round_index

    scalars = [Scalar(name=f"train/{field}", step=row.step, value=getattr(row, field))
               for row in (store.train_metrics(rnd.train_run_id) if rnd.train_run_id else []) for field in STEP_FIELDS]
    round_values: dict[str, Any] = {
        "round/pairs_judged": summary.get("pairs_judged"), "round/consistent_pairs": summary.get("consistent_pairs"),
        "round/position_consistency": summary.get("position_consistency"), "round/invalid_rate": summary.get("invalid_rate"),
        "round/spot_checks_queued": summary.get("spot_checks_queued"),
        "round/principles_counted": len(gate.get("qualified", [])), "round/principles_uncounted": len(gate.get("unqualified", {})),
        "round/trained": train.get("trained"), "round/train_pairs": train.get("n_pairs"),
        "round/first_loss": train.get("first_loss"), "round/last_loss": train.get("last_loss"),
        "round/collapsed": train.get("collapsed"), "round/promoted": summary.get("promoted", False),
    }
    for row in store.agreement(round_id):
        prefix = "agreement" if row.scope == "overall" else metric_name("agreement", f"{row.scope}:{row.subject}")
        for field in ("n", "accuracy", "kappa", "kappa_low", "kappa_high", "true_positive_rate", "false_positive_rate"):
            round_values[f"{prefix}/{field}"] = getattr(row, field)
    if rnd.candidate_id is not None:
        for ev in store.evals(round_id):
            if ev.candidate_id == rnd.candidate_id:
                round_values[metric_name("eval", ev.metric)] = ev.value
    scalars += [Scalar(name=name, step=index, value=float(value)) for name, value in round_values.items() if value is not None]

    ids = {"round_index": index, "round_id": round_id, "policy_id": rnd.policy_id, "judge_id": rnd.judge_id,
           "candidate_id": rnd.candidate_id, "train_run_id": rnd.train_run_id, "constitution_hash": rnd.constitution_hash,
           "seed": rnd.seed, "sampling_backend": summary.get("sampling_backend"), "store": store.name}
    params = {name: str(value) for name, value in ids.items() if value is not None}
    # the config snapshot, less where the store is and where tracking goes (a catalog or URI may hold a password)
    snapshot = {section: value for section, value in rnd.config_json.items() if section not in ("store", "tracking")}
    params |= {f"config.{name}": value for name, value in _flatten(snapshot)}
    key = stable_id("tracking", store.name, round_id)
    decision = summary.get("decision") or rnd.status_reason or ""
    tags = {"rlaif.round_id": round_id, "rlaif.store": store.name, KEY_TAG: key, "rlaif.decision": decision[:_TAG_LIMIT],
            "rlaif.promoted": str(bool(summary.get("promoted", False))).lower()}
    return TrackedRound(round_id=round_id, round_index=index, key=key, store=store.name, started_at=rnd.started_at,
                        finished_at=rnd.finished_at, scalars=scalars, params=params, tags=tags, decision=decision)


def track_round(store: Store, config: TrackingConfig, round_id: str) -> None:
    """Log the finished round `round_id` to the trackers `config` names (none: nothing is done)."""
    if not config.enabled:
        return
    record = tracked_round(store, round_id)
    if config.mlflow:
        log_mlflow(record, config.mlflow, config.experiment)
    if config.tensorboard:
        log_tensorboard(record, Path(config.tensorboard))


def log_mlflow(record: TrackedRound, uri: str, experiment: str) -> str:
    """One MLflow run for the round, replacing any earlier run of the same (store, round); its id."""
    _import("mlflow")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment)
    else:
        experiment_id = found.experiment_id
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    for old in client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{record.key}'"):
        client.delete_run(old.info.run_id)

    started = _millis(record.started_at)
    run = client.create_run(experiment_id, start_time=started, tags={KEY_TAG: record.key},
                            run_name=f"round {record.round_index} ({record.round_id})")
    run_id = run.info.run_id
    at = _millis(record.finished_at) if record.finished_at else started
    metrics = [Metric(s.name, s.value, at, s.step) for s in record.scalars]
    params = [Param(name, value[:6000]) for name, value in record.params.items()]
    tags = [RunTag(name, value) for name, value in record.tags.items()]
    for chunk in chunks(metrics, 1000):
        client.log_batch(run_id, metrics=chunk)
    for chunk in chunks(params, 100):
        client.log_batch(run_id, params=chunk)
    for chunk in chunks(tags, 100):
        client.log_batch(run_id, tags=chunk)
    client.set_terminated(run_id, "FINISHED", end_time=at)
    return run_id


def log_tensorboard(record: TrackedRound, folder: Path) -> Path:
    """The round's scalars as TensorBoard events in `<folder>/<round id>` (earlier events there removed)."""
    _import("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    log_dir = folder / record.round_id
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for s in record.scalars:
            writer.add_scalar(s.name, s.value, global_step=s.step)
        writer.add_text("round/decision", record.decision, global_step=record.round_index)
        writer.add_text("round/params", "\n".join(f"- {name}: `{value}`" for name, value in record.params.items()
                                                  if not name.startswith("config.")), global_step=record.round_index)
    finally:
        writer.close()
    return log_dir


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise TrackingError(f"experiment tracking needs {module}, which is not installed: {INSTALL_HINT} ({exc})") from None


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif prefix and re.fullmatch(r"[\w.\- /]+", prefix):
        yield prefix, value if isinstance(value, str) else json.dumps(value)


def _millis(moment: datetime) -> int:
    """The store's times are naive UTC."""
    return math.floor((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() * 1000)
