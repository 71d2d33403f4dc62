"""Judge client throughput vs a bare asyncio + httpx load generator, side by side in one run.

Both send the same chat-completion requests, at the same concurrency, to one local
OpenAI-compatible server with a fixed service time. Our client adds prompt rendering, JSON-schema
response_format, pydantic validation, retries and budget accounting; the ratio shows what that costs.
Goal: >= 0.9.

    .venv/bin/python benchmarks/judge_throughput.py [--requests 400] [--concurrency 16] [--service-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from constitution.loader import load_constitution
from judges.openai_judge import OpenAIJudge, OpenAIJudgeSettings
from judges.verdict import Order, PairText

REPO = Path(__file__).resolve().parent.parent
STUB_SERVER = REPO / "tests" / "openai_stub_server.py"


def items(n: int) -> list[tuple[PairText, Order]]:
    return [(PairText(prompt=f"Where is order #LS-{i}?", text_a=f"It ships today ({i}).",
                      text_b=f"Thanks for asking; order #LS-{i} ships today and arrives Friday."), "ab" if i % 2 else "ba")
            for i in range(n)]


async def bare_load(base_url: str, payloads: list[dict], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(payload: dict) -> None:
            async with gate:
                (await client.post("/chat/completions", json=payload)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--service-ms", type=float, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    constitution = load_constitution("bundled:support")
    work = items(args.requests)
    # The server runs in its own process so it does not compete with the clients for one GIL.
    server = subprocess.Popen([sys.executable, str(STUB_SERVER), "--service-ms", str(args.service_ms)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None  # stdout=PIPE
    try:
        base_url = server.stdout.readline().strip()
        settings = OpenAIJudgeSettings(base_url=base_url, model="bench", api_key_env=None,
                                       concurrency=args.concurrency, structured_output="json_schema")
        judge = OpenAIJudge(settings)
        # the bare generator sends exactly the requests our client would send
        payloads = []
        for pair, order in work:
            principles = judge.principles_for(pair, constitution)
            payloads.append({"model": "bench", "messages": judge.render(pair, order, principles), "temperature": 0.0, "max_tokens": 400})

        # Alternate the two clients and keep each one's best of `repeats` (a fresh judge each time:
        # a judge instance carries its per-round budget counters).
        ours, bare = float("inf"), float("inf")
        for _ in range(args.repeats):
            bare = min(bare, asyncio.run(bare_load(base_url, payloads, args.concurrency)))
            started = time.perf_counter()
            results = OpenAIJudge(settings).judge(work, constitution)
            ours = min(ours, time.perf_counter() - started)
            assert all(r.parse_status == "ok" for r in results), "benchmark requests must all succeed"
    finally:
        server.communicate("", timeout=30)

    ideal = args.requests * args.service_ms / 1000 / args.concurrency
    print(f"requests={args.requests} concurrency={args.concurrency} service={args.service_ms:.0f} ms (ideal {ideal:.2f} s)")
    print(f"ours: {ours:.2f} s ({args.requests / ours:.1f} req/s)   bare httpx: {bare:.2f} s ({args.requests / bare:.1f} req/s)")
    print(f"RESULT judge_client_vs_bare_httpx {bare / ours:.3f}")


if __name__ == "__main__":
    main()
