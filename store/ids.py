"""Deterministic ids: a content hash of the parts that make a row what it is."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_id(*parts: Any) -> str:
    """16 hex chars of sha256 over the JSON encoding of `parts` (order matters)."""
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def stable_int(*parts: Any) -> int:
    """A deterministic non-negative 63-bit integer (for seeds and hash-based sampling)."""
    return int(stable_id(*parts), 16) >> 1
