"""The local pointwise judge with and without the per-reply cache, side by side in one run.

The pointwise question puts the message and the reply before the principle, so the judge can read a
reply once and ask about each principle from its key/value cache. This scores the same requests
(the gold set's replies x the demo constitution's model-judged principles, on the demo's judge)
twice: each request on the shared instructions only, and grouped by reply. The probabilities must
agree (to 1e-4); the ratio of requests per second is what the per-reply cache buys.

    .venv/bin/python benchmarks/judge_reply_cache.py [--replies 40] [--threads N]

Last line: `RESULT judge_reply_cache_speedup <requests/s grouped by reply / requests/s without>`.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from constitution.loader import load_constitution
from flows.config import load_config
from judges.config import build_judge
from judges.local_logprob import LocalLogprobJudge
from judges.pointwise import question
from lm.loading import set_threads
from review.gold import gold_path
from review.imports import read_label_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    config = load_config(Path(str(resources.files("flows") / "demo.yaml")))
    constitution = load_constitution(config.constitution)
    judge = build_judge(config.judge)
    assert isinstance(judge, LocalLogprobJudge), "the demo's judge is the local one"
    principles = [p for p in constitution.principles if p.judged]

    replies: dict[tuple[str, str], None] = {}  # (message, reply), in file order, each once
    for _, row in read_label_file(gold_path(config.review.gold[0])):
        assert row.prompt is not None and row.text_a is not None and row.text_b is not None  # a gold set names them
        replies.update({(row.prompt, judge._truncate(text)): None for text in (row.text_a, row.text_b)})
    asked = [(message, reply, p) for message, reply in list(replies)[:args.replies] for p in principles]
    turns = judge._examples(constitution, principles)
    prompts = [judge._chat_ids(turns, question(judge.template, p, message, reply)) for message, reply, p in asked]
    prefix = judge._prefix_ids(turns)
    tokens = sum(len(p) - len(prefix) for p in prompts)
    print(f"{len(prompts)} requests ({args.replies} replies x {len(principles)} principles), "
          f"{tokens / len(prompts):.0f} tokens each after the shared {len(prefix)}; {threads} threads")

    probabilities: dict[str, list[tuple[float, float]]] = {}
    seconds: dict[str, float] = {}
    for name, groups in (("alone", list(range(len(prompts)))), ("by reply", [(m, r) for m, r, _ in asked])):
        started = time.perf_counter()
        probabilities[name] = judge._score(prompts, prefix, groups, lambda done, total: None)
        seconds[name] = time.perf_counter() - started
        print(f"{name:9s}: {seconds[name]:6.1f} s, {len(prompts) / seconds[name]:5.2f} requests/s")
    gap = max(abs(a[0] - b[0]) for a, b in zip(probabilities["alone"], probabilities["by reply"]))
    print(f"largest probability gap between the two: {gap:.2e}")
    assert gap < 1e-4, "the per-reply cache changed the judge's answers"
    print(f"RESULT judge_reply_cache_speedup {seconds['alone'] / seconds['by reply']:.2f}")

if __name__ == "__main__":
    main()
