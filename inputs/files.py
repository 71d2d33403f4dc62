"""Reading the files users write (the config, constitutions, prompt and probe files): YAML with
YAML 1.2 booleans, and pydantic errors as one line naming each field."""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


class _Yaml12Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as
    booleans, which would turn `confounds: off` into false; here they stay strings (and pydantic
    still reads "yes"/"off" as a bool where a field is one)."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """Every YAML file the project reads (configs, constitutions, probes, prompts) goes through this."""
    return yaml.load(text, Loader=_Yaml12Loader)


def read_yaml_mapping(path: Path, error: type[Exception], what: str, expected: str) -> dict:
    """The mapping in a YAML file (an empty file is an empty mapping); `error` names the file."""
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected {expected}")
    return data


def read_jsonl(path: Path, error: type[Exception], unit: str = "line") -> list[tuple[int, Any]]:
    """(number, value) of every non-empty line of a JSONL file, numbered from 1; a line that is not
    JSON raises `error` naming the file and the line (`unit`: what the file calls a line)."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise error(f"{path}: {unit} {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return records


Record = TypeVar("Record", bound=BaseModel)


def validated_records(path: Path, records: list[tuple[int, Any]], model: type[Record], error: type[Exception],
                      unit: str, expected: str) -> list[tuple[int, Record]]:
    """(number, record) with every record validated as `model`; the first bad one raises `error` naming
    the file, its `unit` and number, and the field ("expected" says what an object must hold)."""
    rows = []
    for number, record in records:
        if not isinstance(record, dict):
            raise error(f"{path}: {unit} {number}: expected an object with {expected}")
        try:
            rows.append((number, model.model_validate(record)))
        except ValidationError as exc:
            raise error(f"{path}: {unit} {number}: {field_problems(exc)}") from None
    return rows


def field_problems(exc: ValidationError, whole: str = "row") -> str:
    """A record's validation errors in one line, `field: message; ...` (`whole` names an error of the
    record itself)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())


def format_validation_error(exc: ValidationError, principle_names: dict[int, str] | None = None,
                            model: type[BaseModel] | None = None) -> str:
    """One line per problem: `field.path: message` (a principle named by its id where known); an
    unknown key of `model` comes with the closest known one ("did you mean ...?")."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        hint = ""
        if err["type"] == "extra_forbidden" and model is not None and loc:
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known or [], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        if principle_names and len(loc) >= 2 and loc[0] == "principles" and loc[1] in principle_names:
            loc[:2] = [f"principles[{principle_names[loc[1]]}]"]
        where = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{where}: {err['msg']}{hint}")
    return "; ".join(lines)


def _fields_at(model: type[BaseModel], path: list) -> list[str] | None:
    """The field names of the model found at `path` inside `model` (list indexes skipped), if any."""
    current = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        found = _model_in(field.annotation) if field is not None else None
        if found is None:
            return None
        current = found
    return list(current.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (directly, or inside Optional / list / dict)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
