"""The round configuration: one YAML file, validated by pydantic.

Relative paths in the file are resolved against the file's directory. The store is a DuckDB file
(`store.path`, empty = `./rlaif.duckdb` in the working directory) or a DuckLake (`store.kind:
ducklake`, `store.catalog`, `store.data_path`); `--db` on the command line overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evals.stage import EvalSettings
from inputs.files import format_validation_error, load_yaml, read_yaml_mapping
from judges.config import JudgeConfig
from lm.endpoint import EndpointSettings
from review.agreement import AgreementCheck, check_agreement
from review.routing import RoutingPolicy
from sampling.sampler import SamplingParams
from sampling.vllm_engine import VLLMSettings
from store.location import StoreLocation, parse_location
from store.rows import AgreementRow
from training.data import DataPolicy
from training.trainer import DPOParams

# The policy's system message when neither the config nor the constitution gives one.
GENERIC_SYSTEM_PROMPT = "You are a helpful assistant. Reply directly, helpfully, honestly and briefly."


class ConfigError(ValueError):
    """The config file is missing or invalid; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyConfig(_Section):
    path: str | None = Field(default=None, description="checkpoint directory; empty = embedded SmolLM2-135M-Instruct")
    system_prompt: str | None = Field(default=None, description=(
        "the system message of every request to the policy; empty = the constitution's system_prompt (the domain's)"))


class PromptsConfig(_Section):
    source: str = Field(default="bundled:support", description="bundled:NAME, or a .jsonl/.yaml file of {text, tags, split}")
    train_per_round: int = Field(default=64, gt=0, description="train prompts sampled each round")
    heldout: int = Field(default=24, gt=0, description="held-out prompts used to evaluate the candidate")


class SamplerConfig(SamplingParams):
    backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto", description="auto = vLLM if sampler.vllm.python can import it (or a server_url is set), else transformers")
    n: int = Field(default=2, ge=2, description="2: one pair per prompt; more: round-robin judged, best vs worst trained (max_min)")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)

    def params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump(include=set(SamplingParams.model_fields)))


class ReviewConfig(_Section):
    reviews_per_pair: int = Field(default=1, gt=0, description="labels a queued pair needs")
    gate: Literal["auto", "wait", "skip"] = Field(
        default="auto", description="wait for the round's reviews before training: auto = only in a deployed flow")
    wait_timeout_s: int = Field(default=7 * 24 * 3600, gt=0, description="how long a deployed round waits for reviews")
    min_reviewed: int = Field(default=5, ge=0, description="judge-human agreement is checked from this many reviewed pairs")
    min_kappa: float = Field(default=0.2, ge=-1, le=1, description="train only if Cohen's kappa judge vs humans is at least this")
    min_accuracy: float = Field(default=0.6, ge=0, le=1, description="... and their label agreement is at least this")
    session_ttl: int = Field(default=8 * 3600, gt=0, description="seconds a review page login lasts")
    gold: list[str] = Field(default_factory=list, description=(
        "gold sets (bundled:NAME or labels files): pairs people labelled per principle that measure the judge "
        "before any spot-check (bundled:support for the bundled task); one labelled for another constitution is skipped"))

    def agreement_check(self, rows: Sequence[AgreementRow]) -> AgreementCheck:
        """The training gate on a round's judge-human agreement rows, with this section's bars."""
        return check_agreement(rows, self.min_reviewed, self.min_kappa, self.min_accuracy)


class TrainingConfig(DPOParams, DataPolicy):
    """The trainer's hyper-parameters and the data policy, in one config section."""

    processes: int = Field(default=1, gt=0, description="> 1: the round runs `rlaif train` under `accelerate launch` "
                                                           "on this many processes (GPUs; gloo on CPU)")

    def dpo_params(self) -> DPOParams:
        return DPOParams(**self.model_dump(include=set(DPOParams.model_fields)))  # `processes` changes no result

    def data_policy(self) -> DataPolicy:
        return DataPolicy(**self.model_dump(include=set(DataPolicy.model_fields)))


class EvalConfig(EvalSettings):
    """The evaluation and the promotion rule (evals/stage.py, evals/decision.py)."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(default=96, gt=0, description="length of the evaluation's answers, in tokens")
    probes: list[str] = Field(default_factory=list, description="probe sets (bundled:NAME or YAML paths) both models answer")

    @model_validator(mode="before")
    @classmethod
    def _no_point_estimate_bar(cls, data):
        if isinstance(data, dict) and "min_lc_win_rate" in data:
            raise ValueError("min_lc_win_rate was replaced by an interval rule: a candidate is promoted when the lower end "
                             "of its length-controlled win rate's 95% interval clears 0.5 + eval.margin; remove "
                             "min_lc_win_rate (set eval.margin to ask for more than 0.5)")
        return data

    def settings(self) -> EvalSettings:
        return EvalSettings(**self.model_dump(include=set(EvalSettings.model_fields)))


class StoreConfig(StoreLocation):
    artifacts_dir: str | None = Field(default=None, description="adapters etc. (shared by every worker); "
                                      "empty = <db name>-artifacts next to the DuckDB file; a ducklake store must set it")

    @model_validator(mode="after")
    def _artifacts(self) -> StoreConfig:
        if self.kind == "ducklake" and not self.artifacts_dir:
            raise ValueError("store.artifacts_dir: a ducklake store needs a folder for adapters that every worker reads")
        return self


class WorkersConfig(_Section):
    """Run the round's stages as flow runs on Prefect work pools (deployments of `rlaif-stage`, one per
    pool, dispatched with run_deployment); the round's own process only orchestrates. Each stage
    reads its inputs from the store, so with workers on other machines use a ducklake store and a
    shared store.artifacts_dir."""

    sampling: str = Field(description="work pool of the sampling stage")
    judging: str = Field(description="work pool of the judge's qualification and the judging stage")
    training: str = Field(description="work pool of the training stage")
    eval: str = Field(description="work pool of the evaluation stage (candidate vs policy)")
    timeout_s: int = Field(default=24 * 3600, gt=0, description="how long the round waits for one stage")


class RuntimeConfig(_Section):
    threads: int | None = Field(default=None, gt=0, description="torch threads; empty = physical cores")


class TrackingConfig(_Section):
    """Experiment tracking (flows/tracking.py): each finished round's metrics, read back from the store,
    logged to TensorBoard and/or MLflow. Off by default; needs `pip install 'rlaif[tracking]'`."""

    tensorboard: str | None = Field(default=None, description=(
        "TensorBoard log folder; each round writes to its subfolder FOLDER/round-0001, ...; empty = off"))
    mlflow: str | None = Field(default=None, description=(
        "MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, or a folder: MLflow's file store, which "
        "MLflow 3 accepts only with MLFLOW_ALLOW_FILE_STORE=true); one run per round; empty = off"))
    experiment: str = Field(default="rlaif", description="the MLflow experiment the rounds' runs go to (created if missing)")

    @property
    def enabled(self) -> bool:
        return bool(self.tensorboard or self.mlflow)


class CollectConfig(_Section):
    """`rlaif collect`: judge completions and store them, no training (docs/collect.md)."""

    source: Literal["policy", "openai", "file"] = Field(default="policy", description=(
        "policy: sampler.n replies per train prompt from the current policy; openai: from the endpoint collect.openai; "
        "file: the prompts and replies in collect.file"))
    file: str | None = Field(default=None, description="source file: JSONL or Parquet rows of {prompt, responses, tags?, "
                             "id?, metadata?} (sampling/collected.py)")
    openai: EndpointSettings | None = Field(default=None, description="the OpenAI-compatible endpoint to sample from")

    @model_validator(mode="after")
    def _source_settings(self) -> CollectConfig:
        if self.source == "file" and not self.file:
            raise ValueError("collect.source is file but collect.file is empty")
        if self.source == "openai" and self.openai is None:
            raise ValueError("collect.source is openai but the collect.openai section (base_url, model, ...) is missing")
        return self


class RoundConfig(_Section):
    seed: int = Field(default=0, description="every seed of a round (sampling, splits, routing) derives from it")
    constitution: str = Field(default="bundled:support", description="bundled:NAME or a YAML path (docs/constitution.md)")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    routing: RoutingPolicy = Field(default_factory=lambda: RoutingPolicy(high_stakes_tags=["safety", "privacy"]))
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    workers: WorkersConfig | None = Field(default=None, description="empty: every stage runs in the round's process")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)

    @model_validator(mode="after")
    def _adapter_fits_vllm(self) -> RoundConfig:
        if self.sampler.backend != "transformers" and self.training.lora_r > self.sampler.vllm.max_lora_rank:
            raise ValueError(f"training.lora_r {self.training.lora_r} is above sampler.vllm.max_lora_rank "
                             f"{self.sampler.vllm.max_lora_rank}: vLLM could not serve the adapters")
        return self

    def system_prompt(self) -> str:
        """The policy's system message: the config's, else the constitution's, else a generic one."""
        if self.policy.system_prompt:
            return self.policy.system_prompt
        from constitution.loader import load_constitution

        return load_constitution(self.constitution).system_prompt or GENERIC_SYSTEM_PROMPT

    def artifacts_dir(self) -> Path:
        if self.store.artifacts_dir:
            return Path(self.store.artifacts_dir)
        db = self.store.file
        return db.parent / f"{db.stem}-artifacts"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RoundConfig:
    """The config file, with `--set SECTION.FIELD=VALUE` overrides applied (each VALUE read as YAML,
    e.g. `eval.samples_per_prompt=8`, `sampler.vllm.python=.venv-vllm/bin/python`) before it is
    validated; paths in either are relative to the file's folder."""
    path = Path(path)
    data = read_yaml_mapping(path, ConfigError, "config", "a mapping of config sections")
    for assignment in overrides:
        key, sep, value = assignment.partition("=")
        fields = key.strip().split(".")
        if not sep or not all(fields):
            raise ConfigError(f"--set {assignment!r}: expected SECTION.FIELD=VALUE")
        section = data
        for name in fields[:-1]:
            if not isinstance(section.setdefault(name, {}), dict):
                raise ConfigError(f"--set {assignment!r}: {name} is not a section")
            section = section[name]
        section[fields[-1]] = load_yaml(value) if value.strip() else None
    try:
        config = RoundConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, model=RoundConfig)}") from None
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: RoundConfig, base: Path) -> RoundConfig:
    def resolve(value: str | None) -> str | None:
        if value is None or value.startswith("bundled:") or Path(value).is_absolute():
            return value
        return os.path.abspath(base / value)  # not resolve(): a venv's bin/python is a symlink that must stay one

    return config.model_copy(
        update={
            "constitution": resolve(config.constitution),
            "policy": config.policy.model_copy(update={"path": resolve(config.policy.path)}),
            "prompts": config.prompts.model_copy(update={"source": resolve(config.prompts.source)}),
            "judge": config.judge.model_copy(update={"model_path": resolve(config.judge.model_path)}),  # server.command runs as written
            "eval": config.eval.model_copy(update={"probes": [resolve(p) for p in config.eval.probes]}),
            "review": config.review.model_copy(update={"gold": [resolve(g) for g in config.review.gold]}),
            "collect": config.collect.model_copy(update={"file": resolve(config.collect.file)}),
            "sampler": config.sampler.model_copy(update={"vllm": config.sampler.vllm.model_copy(
                update={"python": resolve(config.sampler.vllm.python)})}),
            "store": config.store.model_copy(update={
                "path": resolve(config.store.path), "artifacts_dir": resolve(config.store.artifacts_dir),
                "data_path": config.store.data_path if config.store.data_path and "://" in config.store.data_path
                else resolve(config.store.data_path),
                "catalog": _resolve_sqlite_catalog(config.store.catalog, resolve)}),
            "tracking": config.tracking.model_copy(update={
                "tensorboard": resolve(config.tracking.tensorboard), "mlflow": _resolve_mlflow_uri(config.tracking.mlflow, resolve)}),
        }
    )


def _resolve_mlflow_uri(uri: str | None, resolve) -> str | None:
    """A relative SQLite file (sqlite:///NAME.db) or a bare folder (MLflow's file store) is a path like
    any other; other URIs (sqlite:////abs, file:///abs, http://...) are left alone."""
    if uri is None:
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return "sqlite:///" + resolve(uri.removeprefix("sqlite:///"))
    return uri if "://" in uri else resolve(uri)


def _resolve_sqlite_catalog(catalog: str | None, resolve) -> str | None:
    """A SQLite catalog's file is a path like any other; a PostgreSQL connection string is left alone."""
    if catalog is None or not catalog.startswith("sqlite:"):
        return catalog
    return "sqlite:" + resolve(catalog.removeprefix("sqlite:"))


def with_store(config: RoundConfig, db: str | Path | None) -> RoundConfig:
    """The config with a `--db` override (a DuckDB file or `ducklake:<catalog>`) as its store."""
    if db is None:
        return config
    try:
        store = StoreConfig(**parse_location(db).model_dump(), artifacts_dir=config.store.artifacts_dir)
    except ValidationError as exc:
        raise ConfigError(f"--db {db}: {format_validation_error(exc)}") from None
    return config.model_copy(update={"store": store})


def checked_config(config: RoundConfig, db: str | Path | None = None) -> RoundConfig:
    """Apply a `--db` override and load every input the config names, so that bad input fails before
    anything is written or a server is started (errors name the file and the field)."""
    from constitution.loader import load_constitution
    from evals.probes import load_probe_set
    from prompts.loader import load_prompts
    from review.gold import gold_path
    from review.imports import read_label_file

    config = with_store(config, db)
    load_constitution(config.constitution)
    # settled now, so the round's config snapshot (what stages on workers read) holds the words used
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"system_prompt": config.system_prompt()})})
    load_prompts(config.prompts.source)
    for source in config.eval.probes:
        load_probe_set(source)
    for source in config.review.gold:
        read_label_file(gold_path(source))
    if config.collect.source == "file" and config.collect.file:
        from sampling.collected import CollectedFileError, read_collected_file

        try:
            read_collected_file(Path(config.collect.file))
        except CollectedFileError as exc:
            raise ConfigError(str(exc)) from None
    for name, path in (("policy.path", config.policy.path), ("judge.model_path", config.judge.model_path)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{name}: {path} is not a model checkpoint directory (no config.json)")
    if config.tracking.enabled:  # before the round, not after it
        from flows.tracking import TrackingError, require_packages

        try:
            require_packages(config.tracking)
        except TrackingError as exc:
            raise ConfigError(f"tracking: {exc}") from None
    return config
