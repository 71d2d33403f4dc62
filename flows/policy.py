"""A stored model as weights (its base checkpoint with its adapters merged in) or as a sampler of
the round's backend (transformers in memory, or vLLM serving it as parent weights + one adapter)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.config import RoundConfig
from lm.embedded import EMBEDDED_MODEL_NAME
from lm.loading import base_checkpoint, load_model, load_tokenizer, save_merged_checkpoint
from sampling.sampler import Sampler, TransformersSampler
from sampling.vllm_engine import VLLMEngineSampler, VLLMSettings, running_vllm_engine
from sampling.vllm_server import VLLMServerSampler
from store.db import Store
from store.rows import ModelRow

EMBEDDED_PATH = f"embedded:{EMBEDDED_MODEL_NAME}"  # `models.path` of the bundled SmolLM2


def lineage_base(chain: list[ModelRow]) -> Path:
    """The checkpoint directory at the root of a lineage (the embedded model is converted once)."""
    return base_checkpoint(None if chain[0].path == EMBEDDED_PATH else chain[0].path)


def load_lineage(store: Store, model_id: str):
    """(model, tokenizer): the base weights with every adapter of the model's lineage merged in.
    The model is on the GPU when there is one."""
    chain = store.model_chain(model_id)
    checkpoint = lineage_base(chain)
    return load_model(checkpoint, [Path(m.path) for m in chain[1:]]), load_tokenizer(checkpoint)


def parent_weights(config: RoundConfig, chain: list[ModelRow]) -> Path:
    """The checkpoint vLLM loads to serve the last model of `chain` as one adapter per request: its
    parent's weights, i.e. the base, or (two adapters or more) the base with all but the newest
    merged in, saved once under the parent's id."""
    base = lineage_base(chain)
    if len(chain) <= 2:
        return base
    return save_merged_checkpoint(base, [Path(m.path) for m in chain[1:-1]], config.artifacts_dir() / "merged" / chain[-2].model_id)


@contextmanager
def model_sampler(store: Store, config: RoundConfig, model_id: str, backend: str, log_name: str,
                  loaded: tuple | None = None) -> Iterator[Sampler]:
    """Stored model `model_id` as a sampler of `backend` ("transformers", "vllm-engine", "vllm-server").

    transformers: `loaded` = (model, tokenizer) if the caller has it in memory, else its lineage
    merged now. vLLM applies one LoRA adapter per request, so the model is served as its parent
    weights plus its newest adapter; the engine runs only inside the `with` (its memory is freed after).
    """
    if backend == "transformers":
        model, tokenizer = loaded or load_lineage(store, model_id)
        yield TransformersSampler(model, tokenizer)
        return
    chain = store.model_chain(model_id)
    tokenizer = load_tokenizer(lineage_base(chain))
    adapter = Path(chain[-1].path) if len(chain) > 1 else None
    settings = config.sampler.vllm
    if backend == "vllm-server":
        url, base_name = _server(settings, chain)
        sampler = VLLMServerSampler(url, tokenizer, base_name if adapter is None else model_id)
        if adapter is not None:
            sampler.load_adapter(model_id, adapter)
        yield sampler
        return
    log = config.artifacts_dir() / "logs" / f"vllm-engine-{log_name}.log"
    with running_vllm_engine(settings, parent_weights(config, chain), log, enable_lora=adapter is not None) as engine:
        yield VLLMEngineSampler(engine, tokenizer, adapter)


@contextmanager
def candidate_and_parent_samplers(store: Store, config: RoundConfig, candidate_id: str, backend: str,
                                  log_name: str) -> Iterator[tuple[Sampler, Sampler]]:
    """(candidate, its parent) as vLLM samplers sharing one engine: the engine holds the parent's
    weights (merged) and applies the candidate's adapter per request (a LoRARequest), so both sides
    of an evaluation come from the same engine with the same seeds."""
    chain = store.model_chain(candidate_id)
    assert len(chain) >= 2, f"{candidate_id} is not an adapter"
    tokenizer = load_tokenizer(lineage_base(chain))
    adapter = Path(chain[-1].path)
    settings = config.sampler.vllm
    if backend == "vllm-server":
        url, base_name = _server(settings, chain)
        candidate = VLLMServerSampler(url, tokenizer, candidate_id)
        candidate.load_adapter(candidate_id, adapter)
        yield candidate, VLLMServerSampler(url, tokenizer, base_name)
        return
    log = config.artifacts_dir() / "logs" / f"vllm-engine-{log_name}.log"
    with running_vllm_engine(settings, parent_weights(config, chain), log, enable_lora=True) as engine:
        yield VLLMEngineSampler(engine, tokenizer, adapter), VLLMEngineSampler(engine, tokenizer, None)


def _server(settings: VLLMSettings, chain: list[ModelRow]) -> tuple[str, str]:
    """(url, the server's name for its base model) of the configured vLLM server, which serves its base
    plus one adapter per request: so `chain` (a lineage, base first) may hold one adapter at most."""
    if len(chain) > 2:
        raise ValueError(f"model {chain[-1].model_id} has {len(chain) - 1} adapters; a vLLM server serves its base plus one "
                         "adapter per request. Use the engine mode (no sampler.vllm.server_url) for this lineage.")
    assert settings.server_url and settings.served_model  # set together (VLLMSettings checks)
    return settings.server_url, settings.served_model
