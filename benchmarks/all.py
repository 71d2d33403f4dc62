"""Every benchmark in one run (`make bench`), one after another so they never share the CPU, then a
table of their RESULT lines. The outcome run (`make outcome`, ~90 min) is separate.

    .venv/bin/python benchmarks/all.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [  # (script, what the ratio is, goal)
    ("dpo.py", "DPO trainer tokens/s: ours / TRL DPOTrainer", ">= 1.5"),
    ("sampling.py", "sampling tokens/s: vLLM engine / transformers", ">= 3"),
    ("judge_throughput.py", "judge requests/s: our client / bare httpx", ">= 0.9"),
    ("orchestration.py", "Prefect + DuckDB share of a demo round's wall time", "small"),
    ("store.py", "review page p95 while another process writes (DuckLake on PostgreSQL)", "answers (no 503)"),
]


def main() -> None:
    rows = []
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
    print("\n| benchmark | measures | result | goal | took |\n|---|---|---|---|---|")
    for script, what, result, goal, took in rows:
        print(f"| {script} | {what} | {result} | {goal} | {took / 60:.1f} min |")
    failed = sum(row[2] == "FAILED" for row in rows)
    print(f"RESULT benchmarks_failed {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
