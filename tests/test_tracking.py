"""Experiment tracking (flows/tracking.py): a real round of the tiny model with `tracking` set logs to
a real MLflow store (SQLite, under tmp) and TensorBoard event files, read back here with MLflow's
client and TensorBoard's EventAccumulator and compared with what the DuckDB store holds."""

from __future__ import annotations

import json
import math
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.config import ConfigError, RoundConfig, TrackingConfig, checked_config, load_config
from flows.tracking import STEP_FIELDS, TrackingError, metric_name, require_packages, track_round, tracked_round
from store.db import Store
from store.rows import RoundRow

from helpers import tiny_round_settings


@pytest.fixture(scope="module")
def tracked(prefect_harness, tiny_model_dir, tmp_path_factory):
    """One finished round of the tiny model, tracked by the round flow itself."""
    from flows.round import rlaif_round

    folder = tmp_path_factory.mktemp("tracked")
    config = RoundConfig.model_validate(tiny_round_settings(folder, tiny_model_dir) | {  # round_config's, module-scoped
        "tracking": {"mlflow": f"sqlite:///{folder / 'mlflow.db'}", "tensorboard": str(folder / "tb"), "experiment": "rlaif-test"}})
    summary = rlaif_round(config=config)
    assert summary.status == "finished" and summary.train.trained, summary.decision
    config_file = folder / "config.yaml"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    return config, config_file, summary


def client_of(config: RoundConfig):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=config.tracking.mlflow)


def active_runs(config: RoundConfig, round_id: str):
    client = client_of(config)
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    assert experiment is not None, "the round flow created no MLflow experiment"
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`rlaif.round_id` = '{round_id}'")


def scalars_of(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def same(a: float, b: float, rel: float = 0.0) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=0 if rel == 0 else 1e-7)


def test_a_tracked_round_leaves_one_mlflow_run_whose_metrics_equal_the_store(tracked):
    config, _, summary = tracked
    (run,) = active_runs(config, "round-0001")
    client = client_of(config)
    assert run.info.status == "FINISHED"
    with Store(config.store, read_only=True) as store:
        rnd = store.round_by_index(1)
        steps = store.train_metrics(rnd.train_run_id)
        evals = [e for e in store.evals(rnd.round_id) if e.candidate_id == rnd.candidate_id]
        agreement = store.agreement(rnd.round_id)
    assert steps and evals

    # every training step, with its step number
    for field in STEP_FIELDS:
        history = client.get_metric_history(run.info.run_id, f"train/{field}")
        assert [(m.step, m.value) for m in history] == [(s.step, getattr(s, field)) for s in steps], field
    # every evaluation row of the candidate, by name; the win rates and their intervals by hand too
    metrics = run.data.metrics
    for ev in evals:
        assert same(metrics[metric_name("eval", ev.metric)], ev.value), ev.metric
    by_metric = {e.metric: e.value for e in evals}
    for name in ("win_rate", "win_rate_low", "win_rate_high", "lc_win_rate", "lc_win_rate_low", "lc_win_rate_high",
                 "judge_consistency", "promoted"):
        assert metrics[f"eval/{name}"] == by_metric[name], name
    for name, interval in (("win_rate", summary.eval.raw), ("lc_win_rate", summary.eval.lc)):
        assert (metrics[f"eval/{name}_low"], metrics[f"eval/{name}"], metrics[f"eval/{name}_high"]) == pytest.approx(
            (interval.low, interval.estimate, interval.high))
    assert metrics["eval/pass/short/candidate"] == by_metric["pass:short:candidate"]
    # the round: what was judged, and the decision
    assert metrics["round/promoted"] == float(summary.promoted) == 1.0
    assert metrics["round/pairs_judged"] == rnd.summary_json["pairs_judged"] == summary.pairs_judged
    assert metrics["round/position_consistency"] == summary.position_consistency
    assert metrics["round/first_loss"] == summary.train.first_loss and metrics["round/last_loss"] == summary.train.last_loss
    for row in agreement:
        if row.scope == "overall" and row.kappa is not None:
            assert metrics["agreement/kappa"] == row.kappa and metrics["agreement/accuracy"] == row.accuracy
    # round-level metrics sit at the round's index
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/win_rate")] == [1]

    params, tags = run.data.params, run.data.tags
    assert params["round_index"] == "1" and params["policy_id"] == rnd.policy_id and params["candidate_id"] == rnd.candidate_id
    assert params["judge_id"] == rnd.judge_id and params["constitution_hash"] == rnd.constitution_hash
    assert params["config.training.lora_r"] == "4" and params["config.eval.margin"] == "-0.49"
    assert not any(name.startswith(("config.store.", "config.tracking.")) for name in params)
    assert tags["rlaif.decision"] == summary.decision and tags["rlaif.promoted"] == "true"


def test_tensorboard_holds_the_same_scalars(tracked):
    config, _, summary = tracked
    with Store(config.store, read_only=True) as store:
        record = tracked_round(store, "round-0001")
        steps = store.train_metrics(store.round_by_index(1).train_run_id)
    scalars = scalars_of(config.tracking.tensorboard + "/round-0001")
    assert set(scalars) == {s.name for s in record.scalars}
    for field in STEP_FIELDS:  # TensorBoard keeps float32
        got = scalars[f"train/{field}"]
        assert [step for step, _ in got] == [s.step for s in steps]
        assert all(same(value, getattr(s, field), rel=1e-6) for (_, value), s in zip(got, steps)), field
    assert scalars["round/promoted"] == [(1, 1.0)]
    assert scalars["eval/lc_win_rate"] == [(1, pytest.approx(summary.eval.lc.estimate, rel=1e-6))]


def test_tracking_a_round_again_replaces_its_run_and_its_events(tracked):
    config, config_file, _ = tracked
    (first,) = active_runs(config, "round-0001")
    result = CliRunner().invoke(app, ["track", "1", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "round 1 logged to MLflow" in result.output

    (second,) = active_runs(config, "round-0001")  # one run, not two
    assert second.info.run_id != first.info.run_id
    assert client_of(config).get_run(first.info.run_id).info.lifecycle_stage == "deleted"
    assert second.data.metrics == first.data.metrics and second.data.params == first.data.params

    log_dir = config.tracking.tensorboard + "/round-0001"
    with Store(config.store, read_only=True) as store:
        steps = store.train_metrics(store.round_by_index(1).train_run_id)
        track_round(store, config.tracking, "round-0001")  # and once more, from code
    assert len(active_runs(config, "round-0001")) == 1
    assert len(scalars_of(log_dir)["train/loss"]) == len(steps)  # the old events were removed, not appended to


def test_mlflows_file_store_works_where_mlflow_allows_it(tracked, tmp_path, monkeypatch):
    config, _, summary = tracked
    settings = TrackingConfig(mlflow=(tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without it
    with Store(config.store, read_only=True) as store:
        track_round(store, settings, "round-0001")
        steps = store.train_metrics(store.round_by_index(1).train_run_id)
    (run,) = active_runs(config.model_copy(update={"tracking": settings}), "round-0001")
    assert [m.value for m in client_of(config.model_copy(update={"tracking": settings})).get_metric_history(
        run.info.run_id, "train/loss")] == [s.loss for s in steps]
    assert run.data.metrics["round/promoted"] == float(summary.promoted)


def test_only_a_finished_round_is_tracked(tmp_path):
    with Store(str(tmp_path / "r.duckdb")) as store:
        store.append([RoundRow(round_id="round-0001", round_index=1, status="running", policy_id="p", constitution_hash="c",
                               seed=0, config_json={})])
        settings = TrackingConfig(mlflow=f"sqlite:///{tmp_path / 'mlflow.db'}")
        with pytest.raises(TrackingError, match="round 1 is running, not finished"):
            track_round(store, settings, "round-0001")
        with pytest.raises(TrackingError, match="no round round-0009"):
            track_round(store, settings, "round-0009")
    assert not (tmp_path / "mlflow.db").exists()  # nothing was logged


def test_relative_tracking_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "round.yaml"
    path.write_text("tracking: {tensorboard: tb, mlflow: 'sqlite:///runs/mlflow.db'}\n")
    config = load_config(path)
    assert config.tracking.tensorboard == str(tmp_path / "conf" / "tb")
    assert config.tracking.mlflow == f"sqlite:///{tmp_path / 'conf' / 'runs' / 'mlflow.db'}"
    assert config.tracking.experiment == "rlaif" and config.tracking.enabled
    for uri in ("http://mlflow.internal:5000", "sqlite:////srv/mlflow.db", "file:///srv/mlruns"):
        assert load_config(path, [f"tracking.mlflow={uri}"]).tracking.mlflow == uri
    assert not load_config(path, ["tracking.tensorboard=", "tracking.mlflow="]).tracking.enabled


def test_a_missing_package_is_refused_before_the_round_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where the extra is not installed
    with pytest.raises(TrackingError, match=r"needs mlflow, which is not installed: pip install 'rlaif\[tracking\]'"):
        require_packages(TrackingConfig(mlflow="sqlite:///mlflow.db"))
    require_packages(TrackingConfig(tensorboard="tb"))  # TensorBoard alone does not need mlflow
    with pytest.raises(ConfigError, match=r"^tracking: .*rlaif\[tracking\]"):
        checked_config(RoundConfig(tracking=TrackingConfig(mlflow="sqlite:///mlflow.db")))
