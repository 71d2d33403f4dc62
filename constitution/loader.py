"""Load and validate a constitution YAML: principles with ids, text, weights, optional checks.

The constitution's version is the sha256 of its canonical content (not of the file's bytes, so
comments and formatting don't change it); it is recorded with every judgment.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inputs.files import format_validation_error, read_yaml_mapping

BUNDLED_PREFIX = "bundled:"


class ConstitutionError(ValueError):
    """A constitution file is missing or invalid; the message names the file and the field."""


class Check(BaseModel):
    """Executable test of a completion. A completion passes when every given condition holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_words: int | None = Field(default=None, gt=0)
    forbidden_patterns: list[str] = Field(default_factory=list)
    required_patterns: list[str] = Field(default_factory=list)
    # content, read against the message being answered (any domain):
    figures_from_message: bool = Field(
        default=False, description="every figure in the reply (amounts, dates, times, counts) appears in the message")
    message_terms: int | None = Field(
        default=None, gt=0, description="the reply repeats at least this many of the message's content words")

    @field_validator("forbidden_patterns", "required_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _not_empty(self) -> Check:
        if (self.max_words is None and not self.forbidden_patterns and not self.required_patterns
                and not self.figures_from_message and self.message_terms is None):
            raise ValueError("a check needs max_words, forbidden_patterns, required_patterns, "
                             "figures_from_message or message_terms")
        return self

    def over_word_limit(self, text: str) -> bool | None:
        """Whether `text` breaks this check's word limit (None: the check has none)."""
        return None if self.max_words is None else len(text.split()) > self.max_words

    def failures(self, text: str, message: str = "") -> list[str]:
        """Reasons `text`, a reply to `message`, fails this check (empty list = pass)."""
        reasons = []
        if self.figures_from_message:
            invented = sorted(set(_figures(text)) - set(_figures(message)))
            if invented:
                reasons.append(f"figures not in the message: {', '.join(invented[:5])}")
        if self.message_terms is not None:
            shared = _content_words(message) & _content_words(text)
            if len(shared) < self.message_terms:
                reasons.append(f"repeats {len(shared)} of the message's content words (< {self.message_terms})")
        if self.over_word_limit(text):
            reasons.append(f"{len(text.split())} words > {self.max_words}")
        for pattern in self.forbidden_patterns:
            match = re.search(pattern, text, flags=re.IGNORECASE)
            if match:
                reasons.append(f"contains {match.group(0)!r}")
        if self.required_patterns and not any(
            re.search(p, text, flags=re.IGNORECASE) for p in self.required_patterns
        ):
            reasons.append("matches none of the required patterns")
        return reasons


_FIGURE = re.compile(r"\d+(?:[.,:/]\d+)*")
_STOPWORDS = frozenset("""about above after again against because before being below between could doing during
every from further having here hers herself himself into itself just myself other ours ourselves over should some
such than that their theirs them themselves then there these they this those through under until very what when
where which while whom with would your yours yourself yourselves hello thanks thank please sorry could would""".split())


def _figures(text: str) -> list[str]:
    """Numbers as written (12, 3.50, 9:14, 03/04), without thousands separators or trailing dots."""
    return [m.group(0).replace(",", "").rstrip(".") for m in _FIGURE.finditer(text)]


def _content_words(text: str) -> set[str]:
    """Lower-cased words of 4+ letters that carry meaning (no stopwords), a light plural stem."""
    words = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]{3,}", text)} - _STOPWORDS
    return {w[:-1] if w.endswith("s") and len(w) > 4 else w for w in words}


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    text: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    check: Check | None = None
    # Judge qualification (judges/qualification.py): short texts that break this principle when
    # appended to a good answer. Position 0 may be shown to a judge as an example, the other even
    # positions choose a formulation; odd positions are held out, and only they qualify a judge.
    violations: list[str] = Field(default_factory=list)
    relevance: bool = Field(default=False, description="an answer to a different message breaks this principle")

    @field_validator("violations")
    @classmethod
    def _violations(cls, violations: list[str]) -> list[str]:
        for i, text in enumerate(violations):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"violations[{i}] is empty: each entry is a short text that breaks the principle")
            if len(text) > 400:
                raise ValueError(f"violations[{i}] has {len(text)} characters; keep each under 400 (one or two sentences)")
        if len(set(violations)) != len(violations):
            raise ValueError("violations has duplicate entries")
        return [text.strip() for text in violations]

    @model_validator(mode="after")
    def _violations_need_a_judge(self) -> Principle:
        if self.check is not None and (self.violations or self.relevance):
            raise ValueError("violations and relevance are for model-judged principles; this one has a check, "
                             "which decides it without a judge")
        if len(self.violations) == 1:
            raise ValueError("violations needs at least 2 entries: one to show a judge, one held out to qualify it")
        return self

    @property
    def judged(self) -> bool:
        """Decided by the judge model (no executable check)."""
        return self.check is None


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    principles: list[Principle] = Field(min_length=1)
    neutral_endings: list[str] = Field(
        default_factory=list, description="qualification fillers that break nothing; empty = generic ones")
    system_prompt: str = Field(default="", description=(
        "the domain's system message for the policy (what it is and whom it answers); not part of the content hash, "
        "which covers what the judge is shown"))

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, principles: list[Principle]) -> list[Principle]:
        seen: set[str] = set()
        for p in principles:
            if p.id in seen:
                raise ValueError(f"duplicate principle id {p.id!r}")
            seen.add(p.id)
        return principles

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", exclude={"system_prompt"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def principle(self, principle_id: str) -> Principle:
        return next(p for p in self.principles if p.id == principle_id)


def bundled_constitution_path(name: str) -> Path:
    path = Path(str(resources.files("constitution") / f"{name}.yaml"))
    if not path.is_file():
        raise ConstitutionError(f"no bundled constitution named {name!r}")
    return path


def load_constitution(source: str | Path) -> Constitution:
    """Load `bundled:NAME` or a YAML path; errors name the file and the offending field."""
    source = str(source)
    path = bundled_constitution_path(source[len(BUNDLED_PREFIX):]) if source.startswith(BUNDLED_PREFIX) else Path(source)
    data = read_yaml_mapping(path, ConstitutionError, "constitution", "a mapping with 'name' and 'principles'")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError(f"{path}: {format_validation_error(exc, _principle_names(data))}") from None


def _principle_names(data: dict) -> dict[int, str]:
    """Position -> id of the file's principles, so errors say `principles[honest]`, not `principles.2`."""
    principles = data.get("principles")
    if not isinstance(principles, list):
        return {}
    return {i: p["id"] for i, p in enumerate(principles) if isinstance(p, dict) and isinstance(p.get("id"), str)}
