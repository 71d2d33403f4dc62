"""A small, real OpenAI-compatible HTTP server on 127.0.0.1 for judge tests and benchmarks.

It answers /v1/chat/completions like a judge that always prefers the *shorter* reply (so its
verdicts are position-consistent), and it misbehaves on request when the customer message
contains a fault keyword:

  FAULT:429        first request for that message gets 429, later ones succeed
  FAULT:500        first request gets 500, later ones succeed
  FAULT:slow       first request sleeps past the client's timeout, later ones succeed
  FAULT:schema     first reply has the wrong schema (a vote of "maybe"), the retry is valid
  FAULT:truncated  every reply is cut-off JSON (the judgment must end up `invalid`)
  FAULT:always500  every request gets 500 (the judgment must end up `error`)

`service_time_s` adds a fixed delay to every reply (for throughput benchmarks); with
`reject_json_schema` the server answers 400 to requests that carry a JSON-schema response_format;
`failure_rate` answers 500 to that share of all requests (drawn from a seeded generator).

`mode` picks how it votes: "shorter" (above), "always_a" (slot A on every principle: a pure slot
preference), or "sees" (a judge that can see: on each principle, the reply containing one of that
principle's `violations`, given as {principle id: [texts]}, loses; otherwise a tie). Pointwise
requests (judges/pointwise.py: one reply, "Does the reply break the principle?", max_tokens 1) get
"yes"/"no" with logprobs: in "sees" mode "yes" when the reply holds a violation of the principle
whose text (`principle_texts`, {id: text}) the request quotes, else "no". GET /health answers 200,
as llama.cpp's and vLLM's servers do.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubOpenAIServer:
    def __init__(self, service_time_s: float = 0.0, slow_s: float = 2.0, reject_json_schema: bool | int = False,
                 failure_rate: float = 0.0, seed: int = 0, mode: str = "shorter",
                 violations: dict[str, list[str]] | None = None, principle_texts: dict[str, str] | None = None,
                 port: int = 0):
        assert mode in ("shorter", "always_a", "sees"), mode
        self.mode, self.violations, self.principle_texts = mode, violations or {}, principle_texts or {}
        self.service_time_s, self.slow_s, self.reject_json_schema = service_time_s, slow_s, reject_json_schema
        self.failure_rate, self.rng, self.failed = failure_rate, random.Random(seed), 0
        self.requests = 0
        self.schema_requests = 0  # requests that carried a JSON schema (an int reject_json_schema: only the first N are refused)
        self.per_message: Counter[str] = Counter()
        self.user_messages: list[str] = []  # the first user message of every request, in arrival order
        self.authorization: set[str] = set()
        self.lock = threading.Lock()
        ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops connections under load
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> StubOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                if self.path == "/health":
                    return self._send(200, {"status": "ok"})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                key = user  # the first user message identifies the (pair, order)
                with server.lock:
                    server.requests += 1
                    server.per_message[key] += 1
                    server.user_messages.append(user)
                    nth = server.per_message[key]
                    server.authorization.add(self.headers.get("Authorization", ""))
                    fail = server.rng.random() < server.failure_rate
                    server.failed += fail
                if fail:
                    return self._send(500, {"error": {"message": "flaky upstream", "type": "server_error"}})
                if server.service_time_s:
                    time.sleep(server.service_time_s)
                schema = (body.get("response_format") or {}).get("type") == "json_schema"
                with server.lock:
                    server.schema_requests += schema
                    refused = schema and (server.reject_json_schema is True or server.schema_requests <= int(server.reject_json_schema))
                if refused:
                    return self._send(400, {"error": {"message": "response_format json_schema is not supported", "type": "invalid_request_error"}})
                if "FAULT:always500" in user or ("FAULT:500" in user and nth == 1):
                    return self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
                if "FAULT:429" in user and nth == 1:
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}})
                if "FAULT:slow" in user and nth == 1:
                    time.sleep(server.slow_s)
                last_user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                if "Does the reply break the principle?" in last_user:
                    return self._send(200, _completion(body, *_pointwise_answer(last_user, server), len(last_user)))
                votes = {"shorter": _prefer_shorter, "always_a": _always_a,
                         "sees": lambda text: _sees(text, server.violations)}[server.mode](user)
                content = json.dumps(votes)
                if "FAULT:truncated" in user:
                    content = content[: len(content) // 2]
                elif "FAULT:schema" in user and len(body["messages"]) == 2:  # first attempt; the retry has 4 messages
                    content = content.replace('"A"', '"maybe"', 1).replace('"B"', '"maybe"', 1)
                choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                if body.get("logprobs"):
                    choice["logprobs"] = {"content": _char_logprobs(content)}
                self._send(200, {
                    "id": f"chatcmpl-{server.requests}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [choice],
                    "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4,
                              "total_tokens": len(user) // 4 + len(content) // 4},
                })

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        return Handler


def _pointwise_answer(user: str, server: StubOpenAIServer) -> tuple[str, list[dict]]:
    reply = user.split("\n\nReply:\n", 1)[1].rsplit("\n\nPrinciple: ", 1)[0]
    breaks = False
    if server.mode == "sees":
        principle = user.rsplit("\n\nPrinciple: ", 1)[1].split("\n\n", 1)[0]
        pids = [pid for pid, text in server.principle_texts.items() if text == principle]
        breaks = any(v in reply for pid in pids for v in server.violations.get(pid, []))
    answer, other = ("yes", "no") if breaks else ("no", "yes")
    top = [{"token": answer, "logprob": math.log(0.9), "bytes": None}, {"token": other, "logprob": math.log(0.1), "bytes": None}]
    return answer, [{"token": answer, "logprob": math.log(0.9), "bytes": None, "top_logprobs": top}]


def _completion(body: dict, content: str, logprobs: list[dict], prompt_chars: int) -> dict:
    return {"id": "chatcmpl-pointwise", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length",
                         "logprobs": {"content": logprobs}}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 1, "total_tokens": prompt_chars // 4 + 1}}


def _char_logprobs(content: str) -> list[dict]:
    """One token per character; where a vote letter was written, 80% on it and 20% on the other letter."""
    tokens = []
    for i, ch in enumerate(content):
        top = [{"token": ch, "logprob": 0.0, "bytes": None}]
        if ch in "AB" and content[i - 1:i] == '"' and content[i + 1:i + 2] == '"':
            other = "B" if ch == "A" else "A"
            top = [{"token": ch, "logprob": math.log(0.8), "bytes": None}, {"token": other, "logprob": math.log(0.2), "bytes": None}]
        tokens.append({"token": ch, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
    return tokens


def _principles_and_replies(user: str) -> tuple[list[str], str, str]:
    ids = re.findall(r"^- ([a-z][a-z0-9_]*): ", user, flags=re.MULTILINE)
    a = user.split("Reply A:\n", 1)[1].split("\n\nReply B:\n", 1)[0]
    b = user.split("\n\nReply B:\n", 1)[1].split("\n\nFor every principle", 1)[0]
    return ids, a, b


def _prefer_shorter(user: str) -> dict:
    ids, a, b = _principles_and_replies(user)
    slot = "tie" if len(a) == len(b) else ("A" if len(a) < len(b) else "B")
    return {"votes": {pid: slot for pid in ids}, "rationale": f"Reply {slot} is more to the point." if slot != "tie" else "Equal."}


def _always_a(user: str) -> dict:
    ids, _, _ = _principles_and_replies(user)
    return {"votes": {pid: "A" for pid in ids}, "rationale": "Reply A."}


def _sees(user: str, violations: dict[str, list[str]]) -> dict:
    ids, a, b = _principles_and_replies(user)
    votes = {}
    for pid in ids:
        bad_a = any(v in a for v in violations.get(pid, []))
        bad_b = any(v in b for v in violations.get(pid, []))
        votes[pid] = "B" if bad_a and not bad_b else ("A" if bad_b and not bad_a else "tie")
    return {"votes": votes, "rationale": "The other reply breaks the principle." if set(votes.values()) != {"tie"} else "Equal."}


if __name__ == "__main__":
    # Standalone, so a benchmark's client and this server don't share one Python process (and GIL),
    # and so a test can have the product start it as a managed judge server.
    import argparse
    import signal
    import sys
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--service-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="shorter")
    parser.add_argument("--constitution", help="with --mode sees: the constitution whose violations it sees")
    parser.add_argument("--until-killed", action="store_true", help="serve until SIGTERM (a managed judge server)")
    args = parser.parse_args()
    violations = {}
    if args.constitution:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from constitution.loader import load_constitution

        principles = load_constitution(args.constitution).principles
        violations = {p.id: p.violations for p in principles}
        texts = {p.id: p.text for p in principles}
    with StubOpenAIServer(service_time_s=args.service_ms / 1000, mode=args.mode, violations=violations,
                          principle_texts=texts if args.constitution else None, port=args.port) as stub:
        print(stub.base_url, flush=True)
        if args.until_killed:
            signal.sigwait({signal.SIGTERM})
        else:
            sys.stdin.read()  # serve until the parent closes our stdin


class StubPolicyServer:
    """A real OpenAI-compatible chat endpoint on 127.0.0.1 that plays a policy: it answers each
    request with `n` replies that depend on the prompt, the seed and the choice's index (or with one
    reply when `honours_n` is false, as some servers do), and answers 500 to the first request of
    every prompt holding "FAULT:500"."""

    def __init__(self, honours_n: bool = True):
        self.honours_n = honours_n
        self.requests = 0
        self.per_message: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> StubPolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                user = next(m["content"] for m in body["messages"] if m["role"] == "user")
                with server.lock:
                    server.requests += 1
                    server.per_message[user] += 1
                    nth = server.per_message[user]
                if "FAULT:500" in user and nth == 1:
                    return self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
                n = body.get("n", 1) if server.honours_n else 1
                choices = [{"index": j, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"Reply {j} (seed {body.get('seed')}) to: {user[:40]}" + " sure" * (j % 3)}}
                    for j in range(n)]
                self._send(200, {"id": f"chatcmpl-{server.requests}", "object": "chat.completion", "created": 0,
                                 "model": body["model"], "choices": choices,
                                 "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": 8, "total_tokens": len(user) // 4 + 8}})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
