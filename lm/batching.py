"""Rows of token ids of different lengths as one padded batch: the one padding helper that sampling,
log-prob scoring and the local judge share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"],
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, W) long: every row padded to width W (default: the longest row) with
    `pad_id`, on the left (prompts end at the same column) or the right; mask is 1 on real tokens."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if not row:
            continue
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def chunks(items: Sequence, size: int) -> list[list]:
    """`items` in consecutive lists of at most `size` (the last may be shorter)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]
