"""OpenAI-compatible Chat Completions over HTTP: OpenAI, vLLM's server, llama.cpp's server.

Async with bounded concurrency; every request has a timeout; 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and jitter, honouring `Retry-After`. Other 4xx
answers are not retried (they will not get better). The API key is read from the environment
at call time (or handed over by the caller, e.g. from a Prefect Secret block) and never logged, stored or put in an error message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from slim_core.errors import ConfigError
from slim_core.llm.base import Decoding, Generation, GenerationFailure

log = logging.getLogger("slim_core.llm")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class OpenAICompatibleBackend:
    base_url: str  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    # A key resolved by the caller (e.g. from a Prefect Secret block); kept out of repr and ids.
    api_key: str | None = field(default=None, repr=False)

    @property
    def model_id(self) -> str:
        return f"openai-compatible:{self.model}"

    def _headers(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.api_key_env is None:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"teacher: environment variable {self.api_key_env} is not set (the API key)"
            )
        return {"Authorization": f"Bearer {key}"}

    # Runtime state, not a setting: an event loop in a daemon thread with its HTTP clients,
    # kept from one batch to the next (see `generate`).
    _runner: _LoopRunner | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        """Answer one batch. The event loop and its kept-alive connections outlive the batch:
        a new loop per batch opened `max_concurrency` new connections every time. Callers in
        several threads share one bounded concurrency; a caller inside a running event loop
        works too (the requests run on the backend's own loop)."""
        with self._lock:
            if self._runner is None:
                self._runner = _LoopRunner()
                # stops the thread and closes the connections once the backend is collected
                weakref.finalize(self, self._runner.shutdown)
            runner = self._runner
        return runner.run(self._agenerate(runner, prompts, decoding))

    def close(self) -> None:
        """Close the connections and stop the loop thread (a later `generate` starts anew)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.shutdown()

    def __getstate__(self) -> dict[str, Any]:
        # A pickled copy (e.g. sent to a Dask worker) starts without loop, connections or lock.
        state = dict(self.__dict__)
        state.update(_runner=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    async def _agenerate(
        self, runner: _LoopRunner, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        if runner.idle is None:
            headers = self._headers()
            runner.clients = [self._client(headers) for _ in range(self.max_concurrency)]
            runner.idle = asyncio.Queue()
            for client in runner.clients:
                runner.idle.put_nowait(client)
        return await asyncio.gather(*(self._one(runner.idle, p, decoding) for p in prompts))

    def _client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        """A client that keeps one connection. httpx's connection pool scans all its connections
        on every request and every reply, in Python: with 64 connections in one pool the scans
        cost more CPU than the requests (28% of the ideal throughput at concurrency 64; 16 per
        pool still spent a quarter of the client's CPU there). A pool of one has nothing to scan,
        and the queue of idle clients is the concurrency bound."""
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            verify=_ssl_context(),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def _one(
        self, idle: asyncio.Queue[httpx.AsyncClient], prompt: str, decoding: Decoding
    ) -> Generation | GenerationFailure:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            **decoding.as_dict(),
        }
        error = "not attempted"
        for attempt in range(1, self.max_retries + 2):
            wait: float | None = None
            client = await idle.get()  # waiting for a free connection is not timed
            try:
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                except (httpx.TimeoutException, httpx.TransportError) as exc:
                    error = f"{type(exc).__name__}: request failed or timed out after {self.timeout_s} s"
                else:
                    if response.status_code == 200:
                        parsed = _parse(response)
                        if isinstance(parsed, str):
                            error = parsed
                        else:
                            text, tokens_in, tokens_out = parsed
                            return Generation(
                                text, tokens_in, tokens_out, time.perf_counter() - started, attempt
                            )
                    else:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                        if response.status_code not in RETRYABLE_STATUS:
                            return GenerationFailure(error, attempt)
                        wait = _retry_after(response)
            finally:
                idle.put_nowait(client)  # the connection is free while this prompt backs off
            if attempt <= self.max_retries:
                delay = (
                    wait
                    if wait is not None
                    else min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                )
                delay = delay * (
                    1 + 0.25 * random.random()
                )  # jitter: retries do not arrive in step
                log.info("retrying in %.2f s after: %s", delay, error)
                await asyncio.sleep(delay)
        return GenerationFailure(error, self.max_retries + 1)


class _LoopRunner:
    """An asyncio event loop in a daemon thread, and the HTTP clients that live on it."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.idle: asyncio.Queue[httpx.AsyncClient] | None = None  # clients not in a request
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="slim-openai-http", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def shutdown(self) -> None:
        if self.loop.is_closed():
            return
        if threading.current_thread() is self.thread:  # collected on its own loop: cannot wait
            self.loop.call_soon(self.loop.stop)
            return
        self.run(self._close_clients())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _close_clients(self) -> None:
        clients, self.clients, self.idle = self.clients, [], None
        for client in clients:
            await client.aclose()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: httpx builds a new one per client otherwise,
    loading the CA bundle each time (~20 ms, before the first request of every batch)."""
    return httpx.create_ssl_context()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse(response: httpx.Response) -> tuple[str, int, int] | str:
    """(text, prompt tokens, completion tokens), or an error message for a malformed reply."""
    try:
        data = response.json()
        text = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        return f"malformed reply: {response.text[:200]!r}"
    if not isinstance(text, str):
        return f"malformed reply: content is {type(text).__name__}"
    return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
