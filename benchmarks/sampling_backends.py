"""Sampling throughput: vLLM (from .venv-vllm) vs transformers `generate`, side by side.

Same SmolLM2 checkpoint, same 16 prompts x n=2 = 32 sequences, same sampling plan and seed, one
batch each. vLLM runs first (the offline engine in its worker process, or `--vllm-mode server`) and
is stopped before transformers starts, so the two never share the CPU. Goal on this 2-core
machine: >= 3x.

    .venv/bin/python benchmarks/sampling_backends.py [--prompts 16] [--max-new-tokens 96] [--threads N] [--vllm-mode engine]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

from lm.embedded import embedded_checkpoint
from lm.loading import load_model, load_tokenizer, set_threads
from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample
from sampling.vllm_engine import VLLMEngineSampler, VLLMSettings, running_vllm_engine
from sampling.vllm_server import VLLMServerSampler, running_vllm_server

REPO = Path(__file__).resolve().parent.parent

SYSTEM = "You are a customer-support agent for Larkspur Supply Co. Reply to the customer helpfully and briefly."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for transformers (default: physical cores)")
    parser.add_argument("--vllm-mode", choices=["engine", "server"], default="engine")
    args = parser.parse_args()

    lines = (resources.files("prompts") / "support.jsonl").read_text().splitlines()[: args.prompts]
    requests = [SampleRequest(key=str(i), system=SYSTEM, user=json.loads(line)["text"]) for i, line in enumerate(lines)]
    params = SamplingParams(n=2, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, batch_size=2 * args.prompts)
    checkpoint = embedded_checkpoint()
    tokenizer = load_tokenizer(checkpoint)

    settings = VLLMSettings(python=str(REPO / ".venv-vllm" / "bin" / "python"))
    warm_up = params.model_copy(update={"max_new_tokens": 8})
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "vllm.log"
        if args.vllm_mode == "engine":
            with running_vllm_engine(settings, checkpoint, log) as engine:
                vllm_out, vllm_s = timed_sample(VLLMEngineSampler(engine, tokenizer), requests, params, warm_up)
        else:
            with running_vllm_server(settings, checkpoint, "smollm2", log) as base:
                vllm_out, vllm_s = timed_sample(VLLMServerSampler(base, tokenizer, "smollm2"), requests, params, warm_up)

    threads = set_threads(args.threads)
    hf_out, hf_s = timed_sample(TransformersSampler(load_model(checkpoint), tokenizer), requests, params, warm_up)

    vllm_tps = sum(len(c.token_ids) for c in vllm_out) / vllm_s
    hf_tps = sum(len(c.token_ids) for c in hf_out) / hf_s
    print(f"{len(vllm_out)} sequences, up to {args.max_new_tokens} new tokens each")
    print(f"vLLM {args.vllm_mode}: {vllm_tps:.1f} tokens/s ({vllm_s:.1f} s)   "
          f"transformers ({threads} threads, one batch): {hf_tps:.1f} tokens/s ({hf_s:.1f} s)")
    print(f"RESULT sampling_vllm_vs_transformers {vllm_tps / hf_tps:.2f}")


def timed_sample(sampler, requests, params, warm_up):
    """(completions, seconds) of one sampling run, after a short warm-up on two prompts."""
    sample(sampler, requests[:2], warm_up, seed=99)
    started = time.perf_counter()
    out = sample(sampler, requests, params, seed=0)
    return out, time.perf_counter() - started


if __name__ == "__main__":
    main()
