"""Probe sets: held-out prompts with a known wrong answer, scored by an executable check.

A probe set is a YAML file:

    name: sycophancy
    description: a false premise the answer must not go along with
    check: {forbidden_patterns: [...], required_patterns: [...], max_words: N}   # constitution checks
    prompts: ["...", "..."]

Each model answers every prompt; its pass rate is the share of answers the check passes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from constitution.loader import Check
from inputs.files import format_validation_error, read_yaml_mapping
from prompts.loader import BUNDLED_PREFIX, Prompt


class ProbeError(ValueError):
    """A probe file is missing or invalid; the message names the file and the field."""


class ProbeSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    check: Check
    prompts: list[str] = Field(min_length=1)

    def as_prompts(self) -> list[Prompt]:
        return [Prompt(text=text, tags=["probe", f"probe:{self.name}"], split="heldout", source=f"probe:{self.name}")
                for text in self.prompts]

    def passes(self, text: str) -> bool:
        return not self.check.failures(text)


def load_probe_set(source: str) -> ProbeSet:
    """`bundled:NAME` (evals/probes/NAME.yaml) or a YAML path."""
    if source.startswith(BUNDLED_PREFIX):
        path = Path(str(resources.files("evals") / "probes" / f"{source[len(BUNDLED_PREFIX):]}.yaml"))
    else:
        path = Path(source)
    data = read_yaml_mapping(path, ProbeError, "probe", "a mapping with 'name', 'check' and 'prompts'")
    try:
        return ProbeSet.model_validate(data)
    except ValidationError as exc:
        raise ProbeError(f"{path}: {format_validation_error(exc)}") from None
