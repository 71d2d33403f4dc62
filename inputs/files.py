"""Reading the files users write (the config, constitutions, prompt and probe files): YAML with
YAML 1.2 booleans, and pydantic errors as one line naming each field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


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


def format_validation_error(exc: ValidationError, principle_names: dict[int, str] | None = None) -> str:
    """One line per problem: `field.path: message` (a principle named by its id where known)."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if principle_names and len(loc) >= 2 and loc[0] == "principles" and loc[1] in principle_names:
            loc[:2] = [f"principles[{principle_names[loc[1]]}]"]
        where = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)
