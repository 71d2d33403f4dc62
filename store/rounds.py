"""Queries of the rounds, their stages, models, training runs and evaluations."""

from __future__ import annotations

import json

from store.connection import Connection, StoreError
from store.rows import EvalRow, ModelRow, RoundRow, Stage, StageRunRow, TrainMetricRow, utcnow


class RoundQueries(Connection):
    """Rounds, stage outcomes, model lineage, train metrics, evaluation metrics."""

    def finish_round(self, round_id: str, status: str, reason: str | None, summary: dict, candidate_id: str | None = None,
                     train_run_id: str | None = None) -> None:
        """A round ends (finished or failed): its status, the summary for people, the ids for code (its
        judge's id was stored when judging was done: set_round_judge)."""
        self._write("UPDATE rounds SET status = ?, status_reason = ?, summary_json = ?, finished_at = ?, candidate_id = ?, "
                    "train_run_id = ? WHERE round_id = ?",
                    [status, reason, json.dumps(summary), utcnow(), candidate_id, train_run_id, round_id])

    def set_promotion(self, model_id: str, promoted: bool, reason: str) -> None:
        self._write("UPDATE models SET promoted = ?, promotion_reason = ? WHERE model_id = ?", [promoted, reason, model_id])

    # ---- generic reads ------------------------------------------------------------------------

    def rounds(self) -> list[RoundRow]:
        return self._select(RoundRow, order="round_index")

    def round_by_index(self, round_index: int) -> RoundRow | None:
        found = self._select(RoundRow, "round_index = ?", [round_index])
        return found[0] if found else None

    def current_policy(self) -> ModelRow | None:
        """The most recently promoted model (a base model counts as promoted at round 0)."""
        found = self._select(ModelRow, "promoted", order="created_round DESC, created_at DESC")
        return found[0] if found else None

    def model_chain(self, model_id: str) -> list[ModelRow]:
        """The model and its ancestors, base first (an adapter applies on top of its parent)."""
        chain: list[ModelRow] = []
        next_id: str | None = model_id
        while next_id is not None:
            found = self.by_ids(ModelRow, [next_id])
            if next_id not in found:
                raise StoreError(f"model {next_id} is not in {self.name}")
            chain.append(found[next_id])
            next_id = found[next_id].parent_id
        return chain[::-1]

    # ---- round data ---------------------------------------------------------------------------

    def stage_run(self, round_id: str, stage: Stage) -> StageRunRow | None:
        found = self._select(StageRunRow, "round_id = ? AND stage = ?", [round_id, stage])
        return found[0] if found else None

    def stage_runs(self, round_id: str) -> list[StageRunRow]:
        return self._select(StageRunRow, "round_id = ?", [round_id], "finished_at")

    def set_round_status(self, round_id: str, status: str, reason: str | None) -> None:
        self._write("UPDATE rounds SET status = ?, status_reason = ? WHERE round_id = ?", [status, reason, round_id])

    def set_round_judge(self, round_id: str, judge_id: str) -> None:
        """The judge whose verdicts the round uses, stored as soon as its judging is done, so that status,
        report and export can read the round's verdicts while it goes on."""
        self._write("UPDATE rounds SET judge_id = ? WHERE round_id = ?", [judge_id, round_id])

    def set_round_config(self, round_id: str, config_json: dict) -> None:
        self._write("UPDATE rounds SET config_json = ? WHERE round_id = ?", [json.dumps(config_json, sort_keys=True), round_id])

    def set_flow_run(self, round_id: str, flow_run_id: str) -> None:
        self._write("UPDATE rounds SET flow_run_id = ? WHERE round_id = ?", [flow_run_id, round_id])

    def release_review(self, round_id: str) -> None:
        self._write("UPDATE rounds SET review_released = true WHERE round_id = ?", [round_id])

    def evals(self, round_id: str) -> list[EvalRow]:
        return self._select(EvalRow, "round_id = ?", [round_id], "candidate_id, baseline_id, metric")

    def train_metrics(self, run_id: str) -> list[TrainMetricRow]:
        return self._select(TrainMetricRow, "run_id = ?", [run_id], "step")

    # ---- review ---------------------------------------------------------------------------------
