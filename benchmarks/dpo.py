"""DPO training throughput: our trainer vs TRL's DPOTrainer, side by side.

SmolLM2-135M-Instruct + a fresh LoRA adapter (r=8, alpha=16, every linear layer but the head), fp32,
no gradient checkpointing, on the same preference pairs: real support prompts from
prompts/support.jsonl, each with two completions sampled once by the model itself (transformers
sampler, cached under the rlaif cache dir), so they carry their recorded log-probs. Both trainers
get the same token ids (TRL through a subclass that skips its text tokenisation, which TRL 1.16
cannot be told to skip), the same batch size and number of steps; each runs in its own child
process, with torch threads = physical cores, so its peak RSS is its own.

Each side keeps its own defaults that matter for speed: ours groups batches by length and takes
the reference log-probs recorded at sampling (after a 4-pair forward check) instead of a reference
forward; TRL samples batches at random and runs the reference forward (adapter disabled) in every
step. Tokens/s counts non-padding tokens (prompt twice + chosen + rejected per pair) over the steps
after the first (warm-up) one; the whole train call (setup, reference check or forward, warm-up step
included) is printed too. `--ours-reference forward` makes ours compute its reference log-probs by
a forward pass, once for all pairs before the first step: compare the whole-call numbers then.

    .venv/bin/python benchmarks/dpo.py [--pairs 16] [--batch-size 4] [--steps 6] [--max-new-tokens 100] [--threads N]
                                       [--ours-reference auto|forward]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from lm.embedded import cache_root, embedded_checkpoint
from lm.loading import encode_chat, load_model, load_tokenizer, set_threads

SYSTEM = "You are a customer-support agent for Larkspur Supply Co. Reply to the customer helpfully and briefly."
LORA_R, LORA_ALPHA = 8, 16


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps, after one warm-up step")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    parser.add_argument("--ours-reference", choices=["auto", "forward"], default="auto",
                        help="forward: make our trainer recompute the reference too (as TRL does), for comparison")
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    # children only (benchmarks/gpu_check.py): another checkpoint, another device
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (train_ours if args.child == "ours" else train_trl)(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("CHILD " + json.dumps(result), flush=True)
        return

    pairs = sampled_pairs(args.pairs, args.max_new_tokens)
    completions = [len(p[k]) for p in pairs for k in ("chosen_ids", "rejected_ids")]
    stopped = sum(p[k][-1] == p["eos"] for p in pairs for k in ("chosen_ids", "rejected_ids"))
    print(f"{len(pairs)} pairs: prompts {sum(len(p['prompt_ids']) for p in pairs) / len(pairs):.0f} tokens on average, "
          f"completions {min(completions)}-{max(completions)} tokens (mean {sum(completions) / len(completions):.0f}, "
          f"{stopped}/{len(completions)} ended with <|im_end|>)")
    print(f"batch {args.batch_size}, 1 warm-up + {args.steps} timed steps, LoRA r={LORA_R} all-linear, fp32, "
          f"no gradient checkpointing")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.json"
        data.write_text(json.dumps(pairs))
        for name in ("ours", "trl"):
            command = [sys.executable, __file__, "--child", name, "--data", str(data), "--batch-size", str(args.batch_size),
                       "--steps", str(args.steps), "--ours-reference", args.ours_reference]
            command += ["--threads", str(args.threads)] if args.threads else []
            out = subprocess.run(command, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("CHILD ")), None)
            if out.returncode != 0 or line is None:
                sys.exit(f"{name} child failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
            results[name] = json.loads(line[len("CHILD "):])

    for name, label in (("ours", "ours"), ("trl", "TRL DPOTrainer")):
        r = results[name]
        print(f"{label:15s} {r['tokens_per_s']:7.1f} tokens/s ({r['timed_tokens']} tokens in {r['timed_s']:.1f} s; "
              f"whole train call {r['total_s']:.1f} s, {r['total_tokens_per_s']:.1f} tokens/s)  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB  threads {r['threads']}  "
              f"reference: {r['reference']}")
    ratio = results["ours"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    print(f"RESULT dpo_ours_vs_trl {ratio:.2f}")


def sampled_pairs(n_pairs: int, max_new_tokens: int) -> list[dict]:
    """Pairs of two completions the model sampled for each of the first prompts (sampled once, then cached)."""
    checkpoint = embedded_checkpoint()
    lines = (resources.files("prompts") / "support.jsonl").read_text().splitlines()[:n_pairs]
    key = hashlib.sha256(json.dumps([str(checkpoint), SYSTEM, lines, max_new_tokens]).encode()).hexdigest()[:16]
    cache = cache_root() / "benchmarks" / f"dpo-pairs-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())

    from sampling.sampler import SampleRequest, SamplingParams, TransformersSampler, sample

    set_threads(None)
    tokenizer = load_tokenizer(checkpoint)
    requests = [SampleRequest(key=str(i), system=SYSTEM, user=json.loads(line)["text"]) for i, line in enumerate(lines)]
    started = time.perf_counter()
    samples = sample(TransformersSampler(load_model(checkpoint), tokenizer), requests,
                     SamplingParams(n=2, max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95, batch_size=16), seed=0)
    print(f"sampled {len(samples)} completions in {time.perf_counter() - started:.0f} s (cached in {cache})")
    by_key: dict[str, list] = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    pairs = [{"pair_id": r.key, "prompt_ids": encode_chat(tokenizer, SYSTEM, r.user), "eos": tokenizer.eos_token_id,
              "chosen_ids": by_key[r.key][0].token_ids, "rejected_ids": by_key[r.key][1].token_ids,
              "chosen_sampled_logp": by_key[r.key][0].sum_logprob, "rejected_sampled_logp": by_key[r.key][1].sum_logprob}
             for r in requests]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(pairs))
    return pairs


def pair_tokens(p: dict) -> int:
    return 2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])


def train_ours(args) -> dict:
    from training.pairs import PreferencePair
    from training.trainer import DPOParams, add_lora, plan_steps, train_dpo

    threads = set_threads(args.threads)
    raw = json.loads(args.data.read_text())
    pairs = [PreferencePair(**{k: v for k, v in p.items() if k != "eos"}) for p in raw]
    checkpoint = args.checkpoint or embedded_checkpoint()
    tokenizer = load_tokenizer(checkpoint)
    total_steps = args.steps + 1
    # Our defaults otherwise: group_by_length, shuffle, reference "auto" (recorded log-probs if the check agrees).
    params = DPOParams(batch_size=args.batch_size, max_steps=total_steps, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
                       reference=args.ours_reference,
                       epochs=math.ceil(total_steps / math.ceil(len(pairs) / args.batch_size)))
    model = add_lora(load_model(checkpoint, device=args.device), params, seed=0)
    step_ends: list[float] = []
    started = time.perf_counter()
    result = train_dpo(model, pairs, params, tokenizer.pad_token_id, seed=0, on_step=lambda m: step_ends.append(time.perf_counter()))
    total = time.perf_counter() - started
    steps = plan_steps(pairs, params, seed=0)  # the batches train_dpo took (fixed up front by the seed)
    timed_tokens = sum(pair_tokens(raw[i]) for batch in steps[1:] for i in batch)
    all_tokens = sum(pair_tokens(raw[i]) for batch in steps for i in batch)
    timed = step_ends[-1] - step_ends[0]
    return {"tokens_per_s": timed_tokens / timed, "timed_tokens": timed_tokens, "timed_s": timed, "total_s": total,
            "total_tokens_per_s": all_tokens / total,
            "threads": threads, "steps": len(result.metrics),
            "reference": f"{result.reference.source} ({result.reference.why})"}


def train_trl(args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []
            self.num_tokens: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:  # cumulative non-padding tokens (attention mask), logged every step
                self.num_tokens.append(int(logs["num_tokens"]))

    threads = set_threads(args.threads)
    raw = json.loads(args.data.read_text())
    checkpoint = args.checkpoint or embedded_checkpoint()
    tokenizer = load_tokenizer(checkpoint)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in raw])
    clock = Clock()
    # transformers 5.2x renamed TrainingArguments.gradient_checkpointing (the GPU machine has 5.17)
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in DPOConfig.__dataclass_fields__ else "gradient_checkpointing"
    no_checkpointing: dict[str, Any] = {checkpointing: False}
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps + 1, learning_rate=5e-4,
            bf16=False, **no_checkpointing, use_cpu=args.device == "cpu", logging_steps=1, save_strategy="no",
            report_to=[], disable_tqdm=True, max_length=None, seed=0,
        )
        lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = PreTokenizedDPOTrainer(model=load_model(checkpoint, device=args.device), args=config, train_dataset=dataset,
                                         processing_class=tokenizer, peft_config=lora, callbacks=[clock])
        assert isinstance(trainer.model, PeftModel)  # peft_config: the trainer wraps the model
        assert not getattr(trainer.model.get_base_model(), "is_gradient_checkpointing", False)
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    timed_tokens = clock.num_tokens[-1] - clock.num_tokens[0]
    timed = clock.step_ends[-1] - clock.step_ends[0]
    return {"tokens_per_s": timed_tokens / timed, "timed_tokens": timed_tokens, "timed_s": timed, "total_s": total,
            "total_tokens_per_s": clock.num_tokens[-1] / total,
            "threads": threads, "steps": len(clock.step_ends), "reference": "forward (adapter disabled) in every step"}


if __name__ == "__main__":
    main()
