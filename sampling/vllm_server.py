"""The vLLM backend in server mode: sampling through vLLM's OpenAI-compatible `/v1/completions`.

The prompt is sent as token ids (our chat template, so both backends condition on identical
tokens), and vLLM returns the sampled token ids (`return_tokens_as_token_ids`) with their
log-probabilities under the raw policy distribution. LoRA adapters are served per request: an
adapter is loaded once by name (`/v1/load_lora_adapter`) and named as the request's model; nothing
is merged or reloaded. Each request carries its own seed, so a completion does not depend on what
else is in flight.

`running_vllm_server` starts such a server from `.venv-vllm` (see README); with `enable_lora` it
passes `--enable-lora --max-lora-rank 16` and allows adapters to be loaded at runtime.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from transformers import PreTrainedTokenizerBase

from lm.loading import encode_chat
from sampling.sampler import SampledCompletion, SampleRequest, SamplingParams
from store.ids import stable_int


@contextmanager
def running_vllm_server(python: Path, checkpoint: Path, served_model_name: str, log_path: Path,
                        enable_lora: bool = False, startup_timeout_s: float = 600) -> Iterator[str]:
    """Run vLLM's OpenAI-compatible server on a free 127.0.0.1 port; yields its base URL.

    The settings are the ones that work on this CPU (DESIGN.md 8): float32, eager mode, a 1 GiB KV
    cache, and the module entry point (the `vllm serve` script looks for a package named "vllm").
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--served-model-name", served_model_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    if enable_lora:
        command += ["--enable-lora", "--max-lora-rank", "16"]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM server not ready after {startup_timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


class VLLMServerSampler:
    def __init__(self, base_url: str, tokenizer: PreTrainedTokenizerBase, concurrency: int = 8, timeout_s: float = 600):
        self.base_url = base_url.rstrip("/")   # e.g. http://127.0.0.1:8000 (no /v1)
        self.tokenizer, self.concurrency, self.timeout_s = tokenizer, concurrency, timeout_s

    def load_adapter(self, name: str, path: Path) -> None:
        """Make a LoRA adapter servable under `name` (idempotent)."""
        served = {m["id"] for m in httpx.get(f"{self.base_url}/v1/models", timeout=30).json()["data"]}
        if name in served:
            return
        response = httpx.post(f"{self.base_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                              timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"vLLM refused adapter {name} at {path}: {response.status_code} {response.text[:300]}")

    def sample(self, requests: Sequence[SampleRequest], params: SamplingParams, seed: int, model: str,
               progress: Callable[[int, int], None] = lambda done, total: None) -> list[SampledCompletion]:
        """`params.n` completions per request from `model` (the served base name or an adapter name)."""
        return asyncio.run(self._sample_all(requests, params, seed, model, progress))

    async def _sample_all(self, requests, params, seed, model, progress) -> list[SampledCompletion]:
        gate = asyncio.Semaphore(self.concurrency)
        done = [0]
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s) as client:
            async def one(request: SampleRequest) -> list[SampledCompletion]:
                async with gate:
                    result = await self._sample_one(client, request, params, seed, model)
                done[0] += len(result)
                progress(done[0], len(requests) * params.n)
                return result

            batches = await asyncio.gather(*(one(r) for r in requests))
        return [c for batch in batches for c in batch]

    async def _sample_one(self, client: httpx.AsyncClient, request: SampleRequest, params: SamplingParams,
                          seed: int, model: str) -> list[SampledCompletion]:
        prompt_ids = encode_chat(self.tokenizer, request.system, request.user)
        request_seed = stable_int("vllm-request", seed, request.key) % 2**31
        body = {
            "model": model, "prompt": prompt_ids, "n": params.n, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "seed": request_seed,
            "logprobs": 0, "return_tokens_as_token_ids": True,
        }
        response = await client.post("/v1/completions", json=body)
        response.raise_for_status()
        eos = self.tokenizer.eos_token_id
        out = []
        for choice in sorted(response.json()["choices"], key=lambda c: c["index"]):
            token_ids = [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]
            logprobs = choice["logprobs"]["token_logprobs"]
            finish = "stop" if choice["finish_reason"] == "stop" else "length"
            if finish == "stop" and token_ids and token_ids[-1] != eos:
                raise RuntimeError("vLLM stopped without returning the end-of-turn token; DPO needs it scored")
            out.append(SampledCompletion(
                key=request.key, sample_index=choice["index"], seed=request_seed,
                text=self.tokenizer.decode(token_ids, skip_special_tokens=True).strip(), token_ids=token_ids,
                prompt_tokens=len(prompt_ids), finish_reason=finish, sum_logprob=float(sum(logprobs)),
            ))
        return out
