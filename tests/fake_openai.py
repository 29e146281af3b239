"""A real HTTP server on loopback speaking OpenAI's Chat Completions API, with fault injection.

`plan[prompt]` lists what happens on each successive request for that prompt: "ok", "429"
(with Retry-After 0.05 s; "429:<seconds>" with another), "400", "500", "401", "403", "echo500"
and "echo401" (the request's Authorization header quoted in the error body, as a careless
endpoint does), "slow" (sleeps past the client's timeout, then answers), "drop"
(closes the connection without a reply), "nousage" (a good answer without `usage`), "malformed" (200 with a body that is not a completion),
"bad_steps" (a well-formed completion whose text lacks the three steps). After the plan runs out
every request is "ok". With `required_key`, a request without that Bearer key gets 401.
The server counts requests per prompt and requests that arrive for a
prompt it already answered.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_ANSWER = (
    "Step 1: likes lab glass.\nStep 2: Glassware; Brand1.\nStep 3: Widget 9, since it fits."
)


class FakeOpenAI:
    def __init__(self, latency_s: float = 0.0, slow_s: float = 2.0):
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.plan: dict[str, list[str]] = {}
        self.calls: Counter[str] = Counter()
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, prompt) per request
        self.answered: set[str] = set()
        self.after_answer = 0
        self.authorizations: list[str] = []
        self.required_key: str | None = None
        self.connections: set[tuple[str, int]] = set()  # client (host, port): one per connection
        self.in_flight = 0
        self.peak_in_flight = 0
        self.lock = threading.Lock()
        # socketserver's default listen backlog is 5: a burst of 64 new connections would
        # overflow it and stall clients for a SYN retry (1 s), which no real server does.
        server_class = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 1024})
        self.server = server_class(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(
        self,
        plan: dict[str, list[str]] | None = None,
        latency_s: float = 0.0,
        required_key: str | None = None,
    ) -> None:
        with self.lock:
            self.required_key = required_key
            self.plan = defaultdict(list, {k: list(v) for k, v in (plan or {}).items()})
            self.calls.clear()
            self.arrivals.clear()
            self.answered.clear()
            self.after_answer = 0
            self.authorizations.clear()
            self.connections.clear()
            self.peak_in_flight = 0
            self.latency_s = latency_s

    def settled_calls(self, quiet_s: float = 0.3) -> int:
        """Requests seen so far, once none arrived for `quiet_s`: a request a client sent just
        before it was stopped may still be on its way to the server's threads."""
        calls = -1
        while calls != sum(self.calls.values()):
            calls = sum(self.calls.values())
            time.sleep(quiet_s)
        return calls

    def _next(self, prompt: str) -> str:
        with self.lock:
            self.arrivals.append((time.monotonic(), prompt))
            self.calls[prompt] += 1
            if prompt in self.answered:
                self.after_answer += 1
            steps = self.plan.get(prompt) if isinstance(self.plan, dict) else None
            return steps.pop(0) if steps else "ok"

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
                # algorithm and the client's delayed ACK add ~40 ms to every reply.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                # the client may have given up first (a "slow" reply past its timeout)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                if self.path != "/v1/chat/completions":
                    self.rfile.read(length)
                    return self._reply(404, b'{"error": "not found"}')
                request = json.loads(self.rfile.read(length))
                with fake.lock:
                    fake.authorizations.append(self.headers.get("Authorization", ""))
                    fake.connections.add(self.client_address)
                    fake.in_flight += 1
                    fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
                prompt = request["messages"][-1]["content"]
                action = fake._next(prompt)
                if fake.required_key and fake.authorizations[-1] != f"Bearer {fake.required_key}":
                    action = "401"
                if fake.latency_s:
                    time.sleep(fake.latency_s)
                with fake.lock:
                    fake.in_flight -= 1
                if action.startswith("429"):
                    retry_after = action.partition(":")[2] or "0.05"
                    return self._reply(
                        429, b'{"error": "rate limited"}', {"Retry-After": retry_after}
                    )
                if action in ("400", "401", "403", "500"):
                    return self._reply(int(action), b'{"error": "refused"}')
                if action.startswith("echo"):
                    echoed = {
                        "error": {
                            "message": "invalid request",
                            "headers": {"Authorization": self.headers.get("Authorization")},
                        }
                    }
                    return self._reply(int(action[4:]), json.dumps(echoed).encode())
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return None
                if action == "malformed":
                    return self._reply(200, b'{"id": "x", "object": "chat.completion"}')
                if action == "slow":
                    time.sleep(fake.slow_s)
                text = "I think the user likes things." if action == "bad_steps" else GOOD_ANSWER
                body = {
                    "id": "cmpl-test",
                    "object": "chat.completion",
                    "model": request.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": len(text.split()),
                    },
                }
                if action == "nousage":
                    del body["usage"]
                if action != "bad_steps":
                    with fake.lock:
                        fake.answered.add(prompt)
                return self._reply(200, json.dumps(body).encode())

        return Handler
