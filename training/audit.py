"""The confound audit: before training, check that "chosen" does not differ from "rejected" in ways
that have nothing to do with the constitution. DPO would learn those instead.

Measured on the pairs about to be trained:
- length: the share of pairs (of those whose lengths differ) where the chosen completion has more
  tokens, and the mean log length ratio log(len chosen / len rejected);
- cheap style features: apologising, list formatting, exclamation marks. For each, the share of
  pairs where only the chosen completion has it minus the share where only the rejected one has it
  (0 = no preference, +1 = the data always prefers it).

`balance_length` then brings the chosen-longer share into the configured band by dropping the pairs
that push it out (the most lopsided first), or the caller refuses to train.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydantic import BaseModel

from training.pairs import PreferencePair

STYLE_FEATURES = {
    "apology": re.compile(r"\b(sorry|apolog\w*)\b", re.IGNORECASE),
    "list": re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE),
    "exclamation": re.compile(r"!"),
}


class ConfoundAudit(BaseModel):
    n_pairs: int
    chosen_longer_share: float | None    # None: no pair differs in length
    mean_log_length_ratio: float         # > 0: chosen is longer on average
    mean_chosen_tokens: float
    mean_rejected_tokens: float
    style_preference: dict[str, float]   # feature -> share(only chosen has it) - share(only rejected has it)


class AuditedPair(BaseModel):
    """A pair as the audit sees it: token lengths and texts of both sides."""

    pair: PreferencePair
    chosen_text: str
    rejected_text: str


def audit(pairs: Sequence[AuditedPair]) -> ConfoundAudit:
    n = len(pairs)
    if n == 0:
        return ConfoundAudit(n_pairs=0, chosen_longer_share=None, mean_log_length_ratio=0.0, mean_chosen_tokens=0.0,
                             mean_rejected_tokens=0.0, style_preference={k: 0.0 for k in STYLE_FEATURES})
    lengths = [(len(p.pair.chosen_ids), len(p.pair.rejected_ids)) for p in pairs]
    differing = [(c, r) for c, r in lengths if c != r]
    style = {}
    for name, pattern in STYLE_FEATURES.items():
        has = [(bool(pattern.search(p.chosen_text)), bool(pattern.search(p.rejected_text))) for p in pairs]
        style[name] = (sum(c and not r for c, r in has) - sum(r and not c for c, r in has)) / n
    return ConfoundAudit(
        n_pairs=n,
        chosen_longer_share=sum(c > r for c, r in differing) / len(differing) if differing else None,
        mean_log_length_ratio=sum(math.log(max(c, 1) / max(r, 1)) for c, r in lengths) / n,
        mean_chosen_tokens=sum(c for c, _ in lengths) / n,
        mean_rejected_tokens=sum(r for _, r in lengths) / n,
        style_preference=style,
    )


def balance_length(pairs: Sequence[AuditedPair], low: float, high: float) -> list[AuditedPair]:
    """Drop the most lopsided pairs of the over-represented side until the chosen-longer share is in [low, high]."""
    kept = list(pairs)

    def log_ratio(p: AuditedPair) -> float:
        return math.log(max(len(p.pair.chosen_ids), 1) / max(len(p.pair.rejected_ids), 1))

    while True:
        share = audit(kept).chosen_longer_share
        if share is None or low <= share <= high:
            return kept
        # share too high: drop the pair where chosen is longest relative to rejected; too low: the reverse
        victim = max(kept, key=log_ratio) if share > high else min(kept, key=log_ratio)
        kept.remove(victim)
