"""Sampling throughput: vLLM (server mode, from .venv-vllm) vs transformers `generate`, side by side.

Same SmolLM2 checkpoint, same 16 prompts x n=2 = 32 sequences, same sampling parameters. The vLLM
server is started first and sits idle while transformers runs, so the two never share the CPU.
Goal on this 2-core machine: >= 3x.

    .venv/bin/python benchmarks/sampling.py [--prompts 16] [--max-new-tokens 96] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

# Run as a file, this script's folder comes first on sys.path and its own name would shadow the
# `sampling` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from lm.embedded import embedded_checkpoint  # noqa: E402
from lm.loading import load_model, load_tokenizer, set_threads  # noqa: E402
from sampling.sampler import SampleRequest, SamplingParams, sample  # noqa: E402
from sampling.vllm_server import VLLMServerSampler, running_vllm_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are a customer-support agent for Larkspur Supply Co. Reply to the customer helpfully and briefly."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for transformers (default: physical cores)")
    args = parser.parse_args()

    lines = (resources.files("prompts") / "support.jsonl").read_text().splitlines()[: args.prompts]
    requests = [SampleRequest(key=str(i), system=SYSTEM, user=json.loads(line)["text"]) for i, line in enumerate(lines)]
    params = SamplingParams(n=2, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, batch_size=2 * args.prompts)
    checkpoint = embedded_checkpoint()
    tokenizer = load_tokenizer(checkpoint)

    with tempfile.TemporaryDirectory() as tmp, \
            running_vllm_server(REPO / ".venv-vllm" / "bin" / "python", checkpoint, "smollm2", Path(tmp) / "vllm.log") as base:
        vllm = VLLMServerSampler(base, tokenizer, concurrency=len(requests))
        vllm.sample(requests[:2], params, seed=99, model="smollm2")  # warm-up
        started = time.perf_counter()
        vllm_out = vllm.sample(requests, params, seed=0, model="smollm2")
        vllm_s = time.perf_counter() - started

    threads = set_threads(args.threads)
    model = load_model(checkpoint)
    sample(model, tokenizer, requests[:2], params.model_copy(update={"max_new_tokens": 8}), seed=99)  # warm-up
    started = time.perf_counter()
    hf_out = sample(model, tokenizer, requests, params, seed=0)
    hf_s = time.perf_counter() - started

    vllm_tps = sum(len(c.token_ids) for c in vllm_out) / vllm_s
    hf_tps = sum(len(c.token_ids) for c in hf_out) / hf_s
    print(f"{len(vllm_out)} sequences, up to {args.max_new_tokens} new tokens each")
    print(f"vLLM server: {vllm_tps:.1f} tokens/s ({vllm_s:.1f} s)   transformers ({threads} threads, one batch): {hf_tps:.1f} tokens/s ({hf_s:.1f} s)")
    print(f"RESULT sampling_vllm_vs_transformers {vllm_tps / hf_tps:.2f}")


if __name__ == "__main__":
    main()
