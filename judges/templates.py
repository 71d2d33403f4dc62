"""Judge prompt templates: versioned files in judges/prompts/, the constitution rendered into them.

A template has `[system]`, `[user]` and optional `[assistant]` sections (the assistant section is a
forced prefix the verdict token follows). Its version is `name@<hash of the file>`, so editing a
template invalidates cached judgments made with the old text.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from pydantic import BaseModel


class JudgeTemplate(BaseModel):
    name: str
    system: str
    user: str
    assistant_prefix: str

    @property
    def version(self) -> str:
        digest = hashlib.sha256(f"{self.system}\0{self.user}\0{self.assistant_prefix}".encode()).hexdigest()[:8]
        return f"{self.name}@{digest}"


def load_template(name: str) -> JudgeTemplate:
    text = (resources.files("judges") / "prompts" / f"{name}.txt").read_text()
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.strip() in ("[system]", "[user]", "[assistant]"):
            current = line.strip()[1:-1]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    if "user" not in sections:
        raise ValueError(f"judge template {name} has no [user] section")
    body = {k: "\n".join(v).strip() for k, v in sections.items()}
    return JudgeTemplate(name=name, system=body.get("system", ""), user=body["user"], assistant_prefix=body.get("assistant", ""))
