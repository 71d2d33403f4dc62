"""One pydantic model per table: what the stage libraries hand to the store.

Fields ending in `_json` hold dicts/lists and are serialised by the store.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    table: ClassVar[str]
    key: ClassVar[tuple[str, ...]]


class ModelRow(Row):
    table: ClassVar[str] = "models"
    key: ClassVar[tuple[str, ...]] = ("model_id",)
    model_id: str
    parent_id: str | None
    kind: Literal["base", "adapter"]
    path: str
    created_round: int
    promoted: bool
    promotion_reason: str | None = None
    data_hash: str | None = None
    config_json: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class PromptRow(Row):
    table: ClassVar[str] = "prompts"
    key: ClassVar[tuple[str, ...]] = ("prompt_id",)
    prompt_id: str
    text: str
    source: str
    tags: list[str]
    split: Literal["train", "heldout"]


class CompletionRow(Row):
    table: ClassVar[str] = "completions"
    key: ClassVar[tuple[str, ...]] = ("completion_id",)
    completion_id: str
    round_id: str
    prompt_id: str
    model_id: str
    purpose: Literal["train", "eval", "gold"]  # gold: a labelled pair of a gold set (review/gold.py)
    sample_index: int
    seed: int
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    sum_logprob: float
    sampling_json: dict[str, Any]
    created_at: datetime = Field(default_factory=utcnow)


class PairRow(Row):
    table: ClassVar[str] = "pairs"
    key: ClassVar[tuple[str, ...]] = ("pair_id",)
    pair_id: str
    round_id: str
    prompt_id: str
    purpose: Literal["train", "eval", "gold"]  # gold: a labelled pair of a gold set (review/gold.py)
    completion_a: str
    completion_b: str
    pairing: Literal["pair", "round_robin", "max_min"] = "pair"  # see sampling.stage.pair_samples


ParseStatus = Literal["ok", "invalid", "error"]
Winner = Literal["a", "b", "tie"]


class JudgmentRow(Row):
    table: ClassVar[str] = "judgments"
    key: ClassVar[tuple[str, ...]] = ("judgment_id",)
    judgment_id: str
    pair_id: str
    judge_id: str
    constitution_hash: str
    prompt_version: str
    shown_order: Literal["ab", "ba"]
    parse_status: ParseStatus
    winner: Winner | None
    score: float | None
    votes_json: dict[str, Any]
    rationale: str
    raw_response: str
    latency_s: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


class VerdictRow(Row):
    table: ClassVar[str] = "verdicts"
    key: ClassVar[tuple[str, ...]] = ("pair_id", "judge_id", "constitution_hash")
    pair_id: str
    judge_id: str
    constitution_hash: str
    status: ParseStatus
    winner: Winner | None
    consistent: bool
    confidence: float
    score: float | None
    votes_json: dict[str, Any]
    rationale: str
    judgment_ab: str
    judgment_ba: str
    uncounted: list[str] = Field(default_factory=list)  # model-judged principles the judge did not qualify on


class JudgeQualificationRow(Row):
    table: ClassVar[str] = "judge_qualifications"
    key: ClassVar[tuple[str, ...]] = ("judge_id", "constitution_hash", "set_hash")
    judge_id: str
    constitution_hash: str
    set_hash: str
    split: Literal["select", "qualify"]
    mean_sensitivity: float | None
    position_consistency: float | None
    slot_bias: float | None
    result_json: dict[str, Any]  # judges.qualification.QualificationResult
    created_at: datetime = Field(default_factory=utcnow)


class ReviewQueueRow(Row):
    table: ClassVar[str] = "review_queue"
    key: ClassVar[tuple[str, ...]] = ("pair_id",)
    pair_id: str
    round_id: str
    reasons: list[str]
    queued_at: datetime = Field(default_factory=utcnow)


class ReviewRow(Row):
    """One reviewer's label on one pair; `winner` is in the pair's own a/b terms, whatever was shown.
    `principle`: None for the overall preference, else the principle this label is about."""

    table: ClassVar[str] = "reviews"
    key: ClassVar[tuple[str, ...]] = ("review_id",)
    review_id: str
    pair_id: str
    reviewer: str
    winner: Literal["a", "b", "tie", "skip"]
    rationale: str | None = None
    shown_order: Literal["ab", "ba"]
    created_at: datetime = Field(default_factory=utcnow)
    principle: str | None = None


class ReviewerRow(Row):
    table: ClassVar[str] = "reviewers"
    key: ClassVar[tuple[str, ...]] = ("reviewer_id",)
    reviewer_id: str
    token_sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None  # set by `rlaif review revoke`: the token no longer logs in


class ReviewSessionRow(Row):
    """A logged-in browser: the cookie holds the session secret; only its SHA-256 is stored."""
    table: ClassVar[str] = "review_sessions"
    key: ClassVar[tuple[str, ...]] = ("session_sha256",)
    session_sha256: str
    reviewer_id: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class AgreementRow(Row):
    table: ClassVar[str] = "agreement"
    key: ClassVar[tuple[str, ...]] = ("agreement_id",)
    agreement_id: str
    round_id: str
    judge_id: str
    constitution_hash: str
    scope: Literal["overall", "principle", "tag"]
    subject: str  # "" (overall), a principle id or a tag
    n: int
    accuracy: float | None
    kappa: float | None
    computed_at: datetime = Field(default_factory=utcnow)
    kappa_low: float | None = None           # 95% interval, bootstrap over pairs
    kappa_high: float | None = None
    true_positive_rate: float | None = None   # people see a difference: the judge picks the same reply
    false_positive_rate: float | None = None  # people see a tie: the judge picks a reply anyway


class TrainRunRow(Row):
    table: ClassVar[str] = "train_runs"
    key: ClassVar[tuple[str, ...]] = ("run_id",)
    run_id: str
    round_id: str
    parent_model_id: str
    candidate_id: str
    data_hash: str
    n_pairs: int
    audit_json: dict[str, Any]
    config_json: dict[str, Any]
    created_at: datetime = Field(default_factory=utcnow)


class StepMetrics(BaseModel):
    """One optimizer step, reduced over processes: what the trainer reports and `train_metrics` keeps."""

    step: int
    loss: float
    reward_chosen: float
    reward_rejected: float
    reward_margin: float
    reward_accuracy: float
    grad_norm: float
    lr: float
    tokens_per_s: float


class TrainMetricRow(Row, StepMetrics):
    table: ClassVar[str] = "train_metrics"
    key: ClassVar[tuple[str, ...]] = ("run_id", "step")
    run_id: str


class EvalRow(Row):
    table: ClassVar[str] = "evals"
    key: ClassVar[tuple[str, ...]] = ("round_id", "candidate_id", "baseline_id", "metric")
    round_id: str
    candidate_id: str
    baseline_id: str
    metric: str
    value: float
    n: int


COLLECT_PREFIX = "collect-"


class RoundRow(Row):
    table: ClassVar[str] = "rounds"
    key: ClassVar[tuple[str, ...]] = ("round_id",)
    round_id: str
    round_index: int
    status: Literal["running", "waiting_for_review", "finished", "failed"]
    status_reason: str | None = None
    policy_id: str
    constitution_hash: str
    seed: int
    config_json: dict[str, Any]
    summary_json: dict[str, Any] | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    review_released: bool = False
    flow_run_id: str | None = None
    judge_id: str | None = None      # whose verdicts the round trains on (set once it has judged)
    candidate_id: str | None = None  # the adapter it trained, if any
    train_run_id: str | None = None

    @property
    def kind(self) -> Literal["round", "collect"]:
        """A training round, or a collection (`rlaif collect`: sampled and judged, never trained or
        evaluated; its id starts with "collect-")."""
        return "collect" if self.round_id.startswith(COLLECT_PREFIX) else "round"


Stage = Literal["qualify", "sampling", "judging", "training", "eval"]


class StageRunRow(Row):
    """A finished stage of a round: its outcome (a model of flows/stages.py) and where it ran."""

    table: ClassVar[str] = "stage_runs"
    key: ClassVar[tuple[str, ...]] = ("round_id", "stage")
    round_id: str
    stage: Stage
    outcome_json: dict[str, Any]
    flow_run_id: str | None = None
    work_pool: str | None = None  # None: inside the round's own process
    host: str
    pid: int
    finished_at: datetime = Field(default_factory=utcnow)


class PairRecord(BaseModel):
    """A query result, not a table: a training pair with its texts, token ids and the judge's verdict."""

    pair_id: str
    prompt: str
    prompt_tags: list[str]
    text_a: str
    text_b: str
    ids_a: list[int]
    ids_b: list[int]
    logp_a: float | None  # summed log-prob recorded when the completion was sampled
    logp_b: float | None
    verdict_status: ParseStatus | None  # None: not judged by this judge
    judge_winner: Winner | None
    consistent: bool
    confidence: float
    rationale: str
    votes_json: dict[str, Any]


class PreferenceRecord(BaseModel):
    """A query result, not a table: one trustworthy preference with its texts and token ids."""

    pair_id: str
    prompt: str
    chosen_text: str
    rejected_text: str
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_logp: float | None = None
    rejected_logp: float | None = None
    confidence: float
    rationale: str
    source: Literal["judge", "human"] = "judge"  # human labels override the judge
    chosen_side: Literal["a", "b"]  # which of the pair's two completions is `chosen`
