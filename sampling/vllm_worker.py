"""The vLLM offline engine in its own process (run by `sampling.vllm_engine`, never imported).

It runs under a Python that has vLLM (`.venv-vllm` here, see README), so it imports nothing from
this project: stdlib and vllm only. Protocol, one JSON object per line:

    argv[1]            the `LLM(...)` keyword arguments
    worker -> parent   {"ready": true, "vllm": "<version>"}   once the engine is up
    parent -> worker   {"prompts": [[token ids]...], "seeds": [...], "n": [...], "max_tokens": int,
                        "temperature": float, "top_p": float, "lora": null | {"name", "id", "path"}}
    worker -> parent   {"outputs": [{"token_ids": [...], "logprobs": [...], "finish_reason": ...}]}
                       or {"error": "..."}

Each prompt is one request for n samples with its own seed (vLLM seeds sample j with seed + j);
the outputs are every request's samples in order, flat. vLLM logs to stdout, so the protocol gets a
private copy of the stdout pipe and fd 1 is pointed at stderr before vLLM is imported.
"""

import json
import os
import sys
import traceback
from pathlib import Path

# Run as a file, this script's folder comes first on sys.path; its neighbours must not shadow anything.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def reply(message: dict) -> None:
    protocol.write(json.dumps(message) + "\n")


def main() -> None:
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    llm = LLM(**json.loads(sys.argv[1]))
    reply({"ready": True, "vllm": vllm.__version__})
    for line in sys.stdin:
        try:
            job = json.loads(line)
            params = [
                SamplingParams(n=n, seed=seed, max_tokens=job["max_tokens"], temperature=job["temperature"],
                               top_p=job["top_p"] if job["temperature"] > 0 else 1.0, logprobs=0, detokenize=False)
                for seed, n in zip(job["seeds"], job["n"])
            ]
            lora = LoRARequest(job["lora"]["name"], job["lora"]["id"], job["lora"]["path"]) if job["lora"] else None
            results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in job["prompts"]], params,
                                   lora_request=lora, use_tqdm=False)
            outputs = []
            for result in results:
                for sequence in sorted(result.outputs, key=lambda out: out.index):
                    token_ids = list(sequence.token_ids)
                    # logprobs=0: each position holds the sampled token's log-prob (raw, before temperature)
                    logprobs = [position[token].logprob for position, token in zip(sequence.logprobs, token_ids)]
                    outputs.append({"token_ids": token_ids, "logprobs": logprobs, "finish_reason": sequence.finish_reason})
            reply({"outputs": outputs})
        except Exception:
            reply({"error": traceback.format_exc()})


if __name__ == "__main__":
    main()
