"""A stored model as weights: the base checkpoint of its lineage, plus its adapters merged in."""

from __future__ import annotations

from pathlib import Path

from lm.embedded import EMBEDDED_MODEL_NAME
from lm.loading import base_checkpoint, load_model, load_tokenizer
from store.db import Store
from store.rows import ModelRow

EMBEDDED_PATH = f"embedded:{EMBEDDED_MODEL_NAME}"  # `models.path` of the bundled SmolLM2


def lineage_base(chain: list[ModelRow]) -> Path:
    """The checkpoint directory at the root of a lineage (the embedded model is converted once)."""
    return base_checkpoint(None if chain[0].path == EMBEDDED_PATH else chain[0].path)


def load_lineage(store: Store, model_id: str):
    """(model, tokenizer): the base weights with every adapter of the model's lineage merged in."""
    chain = store.model_chain(model_id)
    checkpoint = lineage_base(chain)
    return load_model(checkpoint, [Path(m.path) for m in chain[1:]]), load_tokenizer(checkpoint)
