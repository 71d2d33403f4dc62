"""The judge a config names (`judge:` section) and how it is built."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from judges.local_logprob import LocalFormulation, LocalLogprobJudge
from judges.openai_judge import OpenAIFormulation, OpenAIJudge, OpenAIJudgeSettings
from judges.server import JudgeServerSettings
from judges.stage import PairwiseJudge
from lm.loading import base_checkpoint, load_model, load_tokenizer, weights_fingerprint


class JudgeConfig(BaseModel):
    """The config's `judge` section: which judge, how it is asked, and the qualification bars."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local_logprob", "openai"] = Field(
        default="local_logprob", description="a local transformers model, or an OpenAI-compatible endpoint (judge.openai)")
    # local_logprob: a local transformers model, verdict read from next-token probabilities
    model_path: str | None = Field(default=None, description="empty = embedded SmolLM2-135M-Instruct")
    formulation: Literal["pointwise_fewshot", "pointwise", "principle_ab", "pairwise_json"] | None = Field(
        default=None, description="how the judge is asked: pointwise_fewshot | pointwise (both kinds), principle_ab "
        "(local only), pairwise_json (openai only); empty = pointwise_fewshot for a local judge, pairwise_json for an "
        "endpoint (docs/judges.md; measured in docs/results.md)")
    tie_margin: float = Field(default=0.02, ge=0, lt=1, description="|score| below this is a tie (0.02: chosen on the "
                              "qualification's select split for SmolLM2 pointwise_fewshot, docs/judges.md)")
    batch_size: int = Field(default=8, gt=0, description="local judge: requests per forward pass")
    max_completion_tokens: int = Field(default=160, gt=0, description="completions are cut to this for the judge")
    # openai: any OpenAI-compatible endpoint; the API key comes from the env var named in openai.api_key_env
    openai: OpenAIJudgeSettings | None = None
    server: JudgeServerSettings | None = Field(
        default=None, description="a judge server to start for the round (and stop after), unless one answers at base_url")
    # qualification (judges/qualification.py): can the judge see each principle before its votes count?
    qualify: bool = Field(default=True, description="qualify the judge at the start of a round (cached per judge and constitution)")
    qualification_prompts: int = Field(default=12, ge=2, description="held-out prompts the qualification set is built from")
    qualification_max_new_tokens: int = Field(default=64, gt=0, description="length of the policy answers it uses")
    min_sensitivity: float = Field(default=0.7, ge=0, le=1,
                                   description="a model-judged principle counts only if the judge's sensitivity reaches this")
    max_slot_bias: float = Field(default=0.2, ge=0, le=1,
                                 description="a judge leaning to one slot by more than this on identical answers counts on nothing")
    require_qualified: bool = Field(default=False, description="refuse the round (before sampling) when no model-judged principle qualifies")
    examples_from_people: int = Field(default=1, ge=0, description=(
        "pointwise_fewshot: per principle, this many pairs people labelled (a gold set's teaching part, spot-checks) "
        "on which the judge disagreed with them become its worked examples; 0 = none"))

    @model_validator(mode="after")
    def _backend_settings(self) -> JudgeConfig:
        if self.kind == "openai" and self.openai is None:
            raise ValueError("judge.kind is openai but the judge.openai section (base_url, model, ...) is missing")
        only = {"principle_ab": "local_logprob", "pairwise_json": "openai"}
        if self.formulation in only and only[self.formulation] != self.kind:
            raise ValueError(f"judge.formulation {self.formulation} needs judge.kind {only[self.formulation]} (not {self.kind})")
        return self

    def local_formulation(self) -> LocalFormulation:
        assert self.formulation != "pairwise_json"  # checked by the model
        return self.formulation or "pointwise_fewshot"

    def openai_formulation(self) -> OpenAIFormulation:
        assert self.formulation != "principle_ab"  # checked by the model
        return self.formulation or "pairwise_json"


def build_judge(config: JudgeConfig) -> PairwiseJudge:
    """The judge `config` asks for (its server, if managed, must be running: see flows.judging.judge_server)."""
    if config.kind == "openai":
        assert config.openai is not None  # checked by the model
        return OpenAIJudge(config.openai, config.openai_formulation(), config.tie_margin)
    checkpoint = base_checkpoint(config.model_path)
    # the id names the model by its folder and its weights: two models in folders of one name (every
    # fine-tune's "final/") must not share cached verdicts
    model_name = f"{checkpoint.name}@{weights_fingerprint(checkpoint)}"
    return LocalLogprobJudge(load_model(checkpoint), load_tokenizer(checkpoint), model_name,
                             batch_size=config.batch_size, tie_margin=config.tie_margin,
                             max_completion_tokens=config.max_completion_tokens, formulation=config.local_formulation())
