"""Sample the pairs of a gold set: two replies per prompt from the base policy, as a round samples them.

    .venv/bin/python benchmarks/gold_pairs.py [--prompts 130] [--out benchmarks/out/gold-pairs.jsonl]

Takes the first N train prompts of the bundled support task in a fixed shuffle, and has the embedded
SmolLM2 answer each twice with the round's default sampler settings (temperature 0.8, top-p 0.95,
96 new tokens) and the bundled constitution's system prompt. Writes one JSON object per pair (prompt, tags,
text_a, text_b) for people to label; review/gold/README.md says how the bundled gold set was
labelled from this file. Last line: `RESULT gold_pairs <pairs written>`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from constitution.loader import load_constitution
from flows.config import SamplerConfig
from lm.embedded import embedded_checkpoint
from lm.loading import load_model, load_tokenizer, set_threads
from prompts.loader import load_prompts
from sampling.sampler import SampleRequest, TransformersSampler, sample
from store.ids import stable_int

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=130)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gold-pairs.jsonl")
    args = parser.parse_args()
    set_threads(None)
    train = sorted((p for p in load_prompts("bundled:support") if p.split == "train"),
                   key=lambda p: stable_int("gold-order", args.seed, p.prompt_id))[:args.prompts]
    checkpoint = embedded_checkpoint()
    sampler = TransformersSampler(load_model(checkpoint), load_tokenizer(checkpoint))
    params = SamplerConfig(batch_size=32).params()  # n=2, the round's default decoding
    system = load_constitution("bundled:support").system_prompt
    requests = [SampleRequest(key=p.prompt_id, system=system, user=p.text) for p in train]
    replies: dict[str, list[str]] = {}
    for c in sorted(sample(sampler, requests, params, args.seed), key=lambda c: c.sample_index):
        replies.setdefault(c.key, []).append(c.text.strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for p in train:
            a, b = replies[p.prompt_id]
            out.write(json.dumps({"prompt": p.text, "tags": p.tags, "text_a": a, "text_b": b}) + "\n")
    print(f"{len(train)} pairs written to {args.out}")
    print(f"RESULT gold_pairs {len(train)}")


if __name__ == "__main__":
    main()
