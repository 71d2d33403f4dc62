"""Every benchmark in one run (`make bench`), one after another so they never share the CPU, then a
table of their RESULT lines, also written to docs/results/benchmarks.json (`--record`, which the
results page is generated from). The outcome run (`make outcome`) is separate.

    .venv/bin/python benchmarks/all.py [--record docs/results/benchmarks.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [  # (script, what the ratio is, goal)
    ("dpo.py", "DPO trainer tokens/s: ours / TRL DPOTrainer", ">= 1.5"),
    ("sampling_backends.py", "sampling tokens/s: vLLM engine / transformers", ">= 3"),
    ("judge_throughput.py", "judge requests/s: our client / bare httpx", ">= 0.9"),
    ("judge_reply_cache.py", "local pointwise judge requests/s: grouped by reply / each alone", ">= 2"),
    ("orchestration.py", "Prefect + DuckDB share of a demo round's wall time", "small"),
    ("store_writers.py", "review page p95 while another process writes (DuckLake on PostgreSQL)", "answers (no 503)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="write the results here (docs/results/benchmarks.json)")
    args = parser.parse_args()
    rows = []
    recorded = []
    for script, what, goal in BENCHMARKS:
        print(f"==> {script}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True)
        sys.stdout.write(done.stdout[-3000:])
        results = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            sys.stdout.write(done.stderr[-3000:])
            rows.append((script, what, "FAILED", goal, time.perf_counter() - started))
        else:
            rows.append((script, what, f"{results[-1][0]} = {results[-1][1]}", goal, time.perf_counter() - started))
            recorded.append({"script": script, "measures": what, "name": results[-1][0], "value": float(results[-1][1]),
                             "goal": goal})
    if args.record:
        args.record.write_text(json.dumps({"command": "python benchmarks/all.py --record " + str(args.record),
                                           "date": datetime.date.today().isoformat(), "results": recorded}, indent=1) + "\n")
    print("\n| benchmark | measures | result | goal | took |\n|---|---|---|---|---|")
    for script, what, result, goal, took in rows:
        print(f"| {script} | {what} | {result} | {goal} | {took / 60:.1f} min |")
    failed = sum(row[2] == "FAILED" for row in rows)
    print(f"RESULT benchmarks_failed {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
