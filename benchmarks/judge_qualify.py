"""Can the config's judge see each principle? The product's qualification, run as a benchmark.

The same cases as `rlaif judge qualify` (judges/qualification.py): each held-out prompt's policy
answer with a neutral ending vs with one of the principle's `violations` (same length, both orders);
answers to other prompts for relevance principles; identical answers for slot bias. `--split select`
uses the violations a formulation may be tuned on (and a few-shot judge is shown); `--split qualify`
(default) the held-out ones the product gates on. Nothing is stored in a database.

    .venv/bin/python benchmarks/judge_qualify.py --config C [--split select] [--set judge.formulation=pointwise]
        [--record docs/results/judge-qualification.json --label NAME]

`--record` merges this judge's row into the results file (`{"judges": {label: {...}}, "chosen": ...}`).
Last line: `RESULT judge_mean_sensitivity <mean sensitivity over the model-judged principles tested>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from constitution.loader import load_constitution
from flows.config import checked_config, load_config
from flows.judging import judge_gate, judge_server, qualification_for
from flows.progress import progress_bar
from flows.tables import qualification_table
from judges.config import build_judge
from lm.loading import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(str(resources.files("flows") / "demo.yaml")))
    parser.add_argument("--split", choices=["select", "qualify"], default="qualify")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--record", type=Path, help="results JSON to merge this judge's row into")
    parser.add_argument("--label", help="row name in --record (default: the judge id)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    config = checked_config(load_config(args.config, args.overrides))
    threads = set_threads(args.threads)
    constitution = load_constitution(config.constitution)

    started = time.perf_counter()
    with judge_server(config):
        judge = build_judge(config.judge)
        with progress_bar(f"qualifying ({args.split})") as progress:
            result, _ = qualification_for(None, config, constitution, judge, args.split, progress)
    trusted = judge_gate(config, constitution, result)
    Console(width=120).print(qualification_table(result, trusted))
    sensitivities = [q.sensitivity for q in result.principles.values()]
    mean = sum(sensitivities) / len(sensitivities) if sensitivities else 0.0
    print(f"{trusted.describe()}; {threads} threads, {time.perf_counter() - started:.0f} s in all")

    if args.record:
        recorded = json.loads(args.record.read_text()) if args.record.exists() else {"judges": {}, "chosen": None}
        recorded["judges"][args.label or result.judge_id] = {
            "judge_id": result.judge_id, "split": args.split, "set_hash": result.set_hash,
            "settings": {k: v for k, v in config.judge.model_dump(mode="json").items()
                         if k in ("kind", "model_path", "formulation", "tie_margin", "openai")},
            "mean_sensitivity": round(mean, 4), "position_consistency": result.position_consistency,
            "slot_bias": result.slot_bias, "seconds_per_pair": round(result.seconds_per_pair, 3),
            "qualified": trusted.qualified, "threads": threads,
            "principles": {pid: q.model_dump() for pid, q in result.principles.items()},
            "command": "benchmarks/judge_qualify.py " + " ".join(sys.argv[1:]),
        }
        args.record.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"RESULT judge_mean_sensitivity {mean:.3f}")


if __name__ == "__main__":
    main()
