"""Load a policy: a base checkpoint plus the chain of LoRA adapters promoted on top of it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # our stages draw their own bars; per-tensor loading bars are noise

from lm.embedded import embedded_checkpoint  # noqa: E402


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads oversubscribe torch on CPU)."""
    try:
        cores = set()
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                physical = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                cores.add((physical, core))
        if cores:
            return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except OSError:
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads deliberately (None = physical cores); returns the number used."""
    chosen = threads or physical_cores()
    torch.set_num_threads(chosen)
    return chosen


def base_checkpoint(path: str | None) -> Path:
    """The checkpoint directory for `path`, or the embedded SmolLM2 when `path` is None."""
    if path is None:
        return embedded_checkpoint()
    resolved = Path(path)
    if not (resolved / "config.json").is_file():
        raise FileNotFoundError(f"model path {resolved} has no config.json (not a checkpoint directory)")
    return resolved


def weights_fingerprint(checkpoint: Path, edge_bytes: int = 4096) -> str:
    """A short fingerprint of the model in `checkpoint`: its config, and the first and last
    `edge_bytes` of every tensor of its safetensors files (a few MiB read for a 3 GB model). A merged
    LoRA or any other fine-tune changes whole tensors, so it changes their edges; other weight files
    are hashed whole."""
    digest = hashlib.sha256((checkpoint / "config.json").read_bytes())
    for weights in sorted(p for p in checkpoint.iterdir() if p.suffix in (".safetensors", ".bin")):
        with weights.open("rb") as f:
            whole = iter(lambda: f.read(16 << 20), b"")
            for block in safetensors_edges(f, edge_bytes) if weights.suffix == ".safetensors" else whole:
                digest.update(block)
    return digest.hexdigest()[:8]


def safetensors_edges(f: BinaryIO, edge_bytes: int) -> Iterator[bytes]:
    """A safetensors file's header (u64 size, then JSON), then the first and last `edge_bytes` of each tensor."""
    header_size = int.from_bytes(f.read(8), "little")
    header = f.read(header_size)
    yield header
    for name, tensor in sorted(json.loads(header).items()):
        if name != "__metadata__":
            start, end = (8 + header_size + offset for offset in tensor["data_offsets"])
            for at in (start, max(start, end - edge_bytes)):
                f.seek(at)
                yield f.read(min(edge_bytes, end - at))


def load_tokenizer(checkpoint: Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_device() -> torch.device:
    """Where models run: this process's GPU when there is one (under `accelerate launch` each process
    has its own), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_model(checkpoint: Path, adapters: Sequence[Path] = (), dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> PreTrainedModel:
    """Base weights with each adapter merged in order: the weights of a promoted policy, on `device`
    (default: the GPU when there is one). fp32: training asks for bf16 autocast itself.

    Merging in memory keeps one code path for every later stage (sampling, judging, training a
    fresh adapter on top); for 135M parameters on CPU it takes well under a second.
    """
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    model.to(torch.device(device or default_device()))  # type: ignore[arg-type]  # transformers' wrapped `to` is typed for self
    for adapter in adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model


def save_merged_checkpoint(checkpoint: Path, adapters: Sequence[Path], out: Path) -> Path:
    """Base + adapters merged and saved as a plain checkpoint, once (written aside, then renamed).

    For servers that apply one LoRA adapter per request (vLLM): a policy with a longer lineage is
    served as this merged parent plus its newest adapter.
    """
    if (out / "config.json").exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    load_model(checkpoint, adapters).save_pretrained(partial)
    load_tokenizer(checkpoint).save_pretrained(partial)
    partial.rename(out)
    return out


def decode_text(tokenizer: PreTrainedTokenizerBase, token_ids: list[int]) -> str:
    """The text of sampled tokens, special tokens (the end-of-turn) left out."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    assert isinstance(text, str)  # one sequence in, one string out
    return text.strip()


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
    """A conversation rendered with the tokenizer's chat template, as text."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert isinstance(text, str)  # tokenize=False renders text
    return text


def encode_chat(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> list[int]:
    """Token ids of a system + user turn followed by the assistant header (generation prompt)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
