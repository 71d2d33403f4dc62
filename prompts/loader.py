"""Load prompts from JSONL (`{"text", "tags", "split"}` per line) or YAML (a list of the same)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inputs.files import field_problems, load_yaml, read_jsonl
from store.ids import stable_id, stable_int

BUNDLED_PREFIX = "bundled:"


class PromptError(ValueError):
    """A prompt file is missing or invalid; the message names the file and the line."""


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    split: Literal["train", "heldout"] = "train"
    source: str = ""

    @property
    def prompt_id(self) -> str:
        return stable_id("prompt", self.text, self.source)


def load_prompts(source: str | Path) -> list[Prompt]:
    """`bundled:NAME` or a .jsonl/.yaml path. The source name (not the path) goes into each id."""
    source = str(source)
    if source.startswith(BUNDLED_PREFIX):
        name = source[len(BUNDLED_PREFIX):]
        path = Path(str(resources.files("prompts") / f"{name}.jsonl"))
        if not path.is_file():
            raise PromptError(f"no bundled prompt set named {name!r}")
        source_name = source
    else:
        path = Path(source)
        source_name = path.name
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found")
    text = path.read_text()
    yaml_file = path.suffix in (".yaml", ".yml")
    if yaml_file:
        try:
            records = load_yaml(text) or []
        except yaml.YAMLError as exc:
            raise PromptError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(records, list):
            raise PromptError(f"{path}: expected a list of prompts")
        numbered = list(enumerate(records, start=1))
    else:
        numbered = read_jsonl(path, PromptError)
    prompts = []
    for number, record in numbered:
        try:
            prompts.append(Prompt.model_validate({**record, "source": source_name}) if isinstance(record, dict) else Prompt.model_validate(record))
        except ValidationError as exc:
            problems = field_problems(exc, whole="prompt")
            raise PromptError(f"{path}: {'prompt' if yaml_file else 'line'} {number}: {problems}") from None
    if not prompts:
        raise PromptError(f"{path}: no prompts")
    return prompts


def select_heldout_prompts(prompts: list[Prompt], n: int, seed: int) -> list[Prompt]:
    """The same held-out prompts every round, so rounds are comparable."""
    heldout = sorted((p for p in prompts if p.split == "heldout"), key=lambda p: stable_int("heldout-order", seed, p.prompt_id))
    if not heldout:
        raise ValueError("the prompt source has no heldout prompts")
    return heldout[:n]
