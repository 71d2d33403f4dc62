"""How often does the promotion gate err, how reproducible are its decisions, and what does each k cost?

    .venv/bin/python benchmarks/decision.py [--out DIR] [--heldout 24] [--train-per-round 64] [--pool 20]
                                            [--aa 200] [--set SECTION.FIELD=VALUE ...]

1. One round of the bundled task at the size of benchmarks/outcome.py trains a candidate C from the
   base policy P (the round's own evaluation is part of it).
2. C and P answer every held-out prompt `pool` times, sample j with the same seed on both sides
   (common random numbers), sampled and judged in slices so that the wall time of an evaluation at
   k = 1, 2 and 4 samples per prompt is measured on fresh samples (sampling both sides + judging).
3. Reproducibility: for each k, the pool is cut into pool // k disjoint evaluations of C vs P (so
   they are independent), each decided by the gate; reported: their LC win rates (spread) and the
   share that reach the most common decision (goal >= 90%).
4. A/A: P against itself. Each A/A evaluation draws 2k of P's pooled samples per prompt at random
   and splits them into two sides (independent draws from one model: no common seeds, which would
   make both sides identical); the share the gate promotes is its false-promotion rate (goal <= 5%;
   the rule's stated rate is 2.5%). The A/A evaluations share one pool, so they are not independent
   of each other; their pairs are judged from the judge's cache of already-scored replies.

Writes DIR/decision.json; the last line is `RESULT false_promotion_rate <rate at the default k>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from constitution.loader import load_constitution
from evals.stage import EvalOutcome, EvalSettings, sample_side, score_head_to_head
from flows.config import RoundConfig, checked_config, load_config
from flows.judging import taught_judge, trusted_principles
from flows.loop import rlaif_loop
from flows.policy import model_sampler
from judges.config import build_judge
from prompts.loader import load_prompts, select_heldout_prompts
from sampling.vllm_engine import choose_backend
from stats.intervals import wilson_interval
from store.db import Store
from store.ids import stable_int
from store.rows import CompletionRow

from outcome import write_config  # benchmarks/outcome.py: the benchmark-size config

REPO = Path(__file__).resolve().parent.parent

KS = (1, 2, 4)


def timed_slices(pool: int) -> list[tuple[int, int]]:
    """(first sample, k) of the pool's slices: one fresh evaluation at each k, then the rest in one go."""
    slices, first = [], 0
    for k in KS:
        slices.append((first, k))
        first += k
    if first < pool:
        slices.append((first, pool - first))
    return slices


def sample_pool(store: Store, config: RoundConfig, backend: str, models: tuple[str, str], eval_id: str, heldout, pool: int,
                seed: int) -> tuple[dict[str, list[CompletionRow]], dict[int, float]]:
    """Every model's `pool` samples per prompt (same seeds on both sides); seconds of each timed slice, both sides."""
    params = config.sampler.params().model_copy(update={"max_new_tokens": config.eval.max_new_tokens})
    answers: dict[str, list[CompletionRow]] = {}
    seconds: defaultdict[int, float] = defaultdict(float)
    for model_id in models:  # one model (one engine) at a time; its start-up is not counted
        answers[model_id] = []
        with model_sampler(store, config, model_id, backend, eval_id) as sampler:
            for first, k in timed_slices(pool):
                started = time.perf_counter()
                answers[model_id] += sample_side(store, sampler, model_id, eval_id, heldout, config.system_prompt(), params,
                                                 seed, first, k)
                seconds[first] += time.perf_counter() - started
        print(f"sampled {model_id}: {len(answers[model_id])} answers", flush=True)
    return answers, dict(seconds)


def evaluation_summary(outcome: EvalOutcome) -> dict:
    return {"lc": outcome.lc.estimate, "lc_low": outcome.lc.low, "lc_high": outcome.lc.high, "raw": outcome.raw.estimate,
            "minimum_detectable": outcome.minimum_detectable, "verdict": outcome.decision.verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "decision")
    parser.add_argument("--train-per-round", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--pool", type=int, default=20, help="samples per held-out prompt and model")
    parser.add_argument("--aa", type=int, default=200, help="A/A evaluations per k")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_path = write_config(out, args)
    config = checked_config(load_config(config_path))
    constitution = load_constitution(config.constitution)
    heldout = select_heldout_prompts(load_prompts(config.prompts.source), config.prompts.heldout, config.seed)

    started = time.perf_counter()
    rlaif_loop(config_path=str(config_path), rounds=1)
    round_s = time.perf_counter() - started
    with Store(config.store, read_only=True) as store:
        rnd = store.round_by_index(1)
        assert rnd is not None and rnd.candidate_id, f"round 1 trained no candidate: {rnd and rnd.status_reason}"
        candidate, parent = rnd.candidate_id, rnd.policy_id
        round_decision = rnd.status_reason

    backend, _ = choose_backend(config.sampler.backend, config.sampler.vllm)
    eval_id = "decision-pool"
    seed = stable_int("decision-seed", config.seed) % 2**31
    with Store(config.store) as store:
        answers, sampling_s = sample_pool(store, config, backend, (candidate, parent), eval_id, heldout, args.pool, seed)
        base = build_judge(config.judge)
        gate, _, _ = trusted_principles(store, config, constitution, base)
        judge = taught_judge(base, gate.taught)

        def judged(name: str, side_a: list[CompletionRow], side_b: list[CompletionRow], k: int) -> tuple[EvalOutcome, float]:
            begun = time.perf_counter()
            outcome = score_head_to_head(store, judge, constitution, name, heldout, [], side_a, side_b,
                                         EvalSettings(samples_per_prompt=k), uncounted=gate.uncounted)
            return outcome, time.perf_counter() - begun

        def indices(side: list[CompletionRow], first: int, k: int) -> list[CompletionRow]:
            return [c for c in side if first <= c.sample_index < first + k]

        cost = {}
        for first, k in timed_slices(args.pool):  # fresh replies: the judge has scored none of them yet
            outcome, judging_s = judged(eval_id, indices(answers[candidate], first, k), indices(answers[parent], first, k), k)
            if k in KS:
                cost[k] = {"sampling_s": sampling_s[first], "judging_s": judging_s, "wall_s": sampling_s[first] + judging_s,
                           "per_prompt_s": (sampling_s[first] + judging_s) / len(heldout)}
                print(f"k={k}: {cost[k]['wall_s']:.0f} s ({sampling_s[first]:.0f} sampling, {judging_s:.0f} judging)", flush=True)

        reproducibility = {}
        for k in KS:
            runs = [evaluation_summary(judged(eval_id, indices(answers[candidate], first, k), indices(answers[parent], first, k), k)[0])
                    for first in range(0, args.pool - k + 1, k)]
            decisions = Counter(r["verdict"] for r in runs)
            lcs = [r["lc"] for r in runs]
            reproducibility[k] = {
                "evaluations": len(runs), "decisions": dict(decisions), "same_decision": decisions.most_common(1)[0][1] / len(runs),
                "lc_mean": statistics.fmean(lcs), "lc_sd": statistics.stdev(lcs) if len(lcs) > 1 else None,
                "lc_min": min(lcs), "lc_max": max(lcs),
                "interval_width_mean": statistics.fmean(r["lc_high"] - r["lc_low"] for r in runs),
                "minimum_detectable_mean": statistics.fmean(r["minimum_detectable"] for r in runs), "runs": runs}
            print(f"reproducibility k={k}: {dict(decisions)}; LC {min(lcs):.2f}-{max(lcs):.2f}", flush=True)

        a_a = {}
        policy_pool = answers[parent]
        by_prompt: dict[str, list[CompletionRow]] = {}
        for c in policy_pool:
            by_prompt.setdefault(c.prompt_id, []).append(c)
        for k in KS:
            verdicts: Counter[str] = Counter()
            for e in range(args.aa):
                rng = np.random.default_rng(stable_int("a/a", k, e) % 2**32)
                side_a, side_b = [], []
                for samples in by_prompt.values():
                    drawn = [samples[i] for i in rng.choice(len(samples), size=2 * k, replace=False)]
                    for j, (a, b) in enumerate(zip(drawn[:k], drawn[k:])):  # matched as sample j of each side
                        side_a.append(a.model_copy(update={"sample_index": j}))
                        side_b.append(b.model_copy(update={"sample_index": j}))
                verdicts[judged(f"decision-aa-k{k}-{e}", side_a, side_b, k)[0].decision.verdict] += 1
            promoted = verdicts["promote"] / args.aa
            low, high = wilson_interval(promoted, args.aa)
            a_a[k] = {"evaluations": args.aa, "verdicts": dict(verdicts), "false_promotion_rate": promoted,
                      "false_promotion_ci": [low, high], "worse_rate": verdicts["worse"] / args.aa}
            print(f"A/A k={k}: {dict(verdicts)}; promoted {promoted:.1%} (95% CI {low:.1%}-{high:.1%})", flush=True)

    default_k = EvalSettings().samples_per_prompt
    result = {
        "command": "python benchmarks/decision.py " + " ".join(sys.argv[1:]),
        "heldout_prompts": len(heldout), "pool": args.pool, "backend": backend, "judge": judge.judge_id,
        "trusted_principles": sorted(gate.qualified), "candidate": candidate, "parent": parent,
        "round_minutes": round_s / 60, "round_decision": round_decision, "default_k": default_k,
        "cost": cost, "reproducibility": reproducibility, "a_a": a_a,
    }
    (out / "decision.json").write_text(json.dumps(result, indent=1))
    print(f"results: {out / 'decision.json'}")
    print(f"RESULT false_promotion_rate {a_a[default_k]['false_promotion_rate']:.4f}")


if __name__ == "__main__":
    main()
