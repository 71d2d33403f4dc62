"""docs/configuration.md, generated from the config models' fields (their defaults and descriptions),
so the page cannot drift from the code: `python -m flows.config_docs` rewrites it, and a test fails
while it is out of date."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from flows.config import RoundConfig

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEADER = """# Configuration

One YAML file, validated by pydantic: unknown keys are errors (with the closest known key suggested),
and relative paths resolve against the file's folder. `rlaif init` writes a starter file;
`--set SECTION.FIELD=VALUE` overrides any field from the command line. Every field below is
optional; the table gives its default.

This page is generated from the code (`python -m flows.config_docs`); a test fails when it is out of
date.
"""


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: object) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.split(".")[-1] if "Literal" not in text else text.replace("Literal", "one of ")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return "empty" if value is None else json.dumps(value)


def section(name: str, model: type[BaseModel], out: list[str]) -> None:
    """One table per section (its plain fields); its subsections follow it."""
    rows, nested = [], []
    for field_name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None:
            nested.append((f"{name}.{field_name}" if name else field_name, sub))
            continue
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        default = _default(field).replace("|", "\\|")
        rows.append(f"| `{field_name}` | `{default}` | {description} |")
    if rows:
        out += [f"## `{name}`" if name else "## Top level", ""]
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        if doc and name:
            out += [doc, ""]
        out += ["| field | default | |", "|---|---|---|", *rows, ""]
    for sub_name, sub in nested:
        section(sub_name, sub, out)


def render() -> str:
    out = [HEADER]
    section("", RoundConfig, out)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.stdout.write(f"wrote {PAGE}\n")
