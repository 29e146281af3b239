"""OpenAI-compatible Chat Completions over HTTP: OpenAI, vLLM's server, llama.cpp's server.

Async with bounded concurrency; every request has a timeout; 429, 5xx, timeouts and dropped
connections are retried with exponential backoff and jitter, honouring `Retry-After` up to
`max_backoff_s` (a longer one dead-letters the prompt at once). Other 4xx answers are not
retried (they will not get better); 401 and 403 stop the whole batch with `AuthenticationError`,
since every other prompt would be refused too. The API key is read from the environment at call
time (or handed over by the caller, e.g. from a Prefect Secret block) and never logged, stored
or put in an error message, even when an endpoint echoes it in a reply. `stop_requests()` (the
flow's runtime calls it on SIGTERM and SIGINT) cancels every request and backoff wait at once,
so nothing is sent, and billed, after a stop. HTTP(S)_PROXY / NO_PROXY from the
environment are honoured.

The requests go through `max_concurrency` `httpx.AsyncClient`s of one kept-alive connection
each, handed out by a queue of idle clients (the bound on requests in flight), on an event loop
in a daemon thread, so that synchronous callers in several threads share the connections from
one batch to the next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import queue
import random
import re
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import httpx

from slim_core.errors import ConfigError
from slim_core.llm.base import Decoding, Generation, GenerationFailure

log = logging.getLogger("slim_core.llm")

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
AUTH_STATUS = {401, 403}
_FINISHED = object()  # put after the last answer of a `generate_each` call, or on its error


class AuthenticationError(ConfigError):
    """The endpoint refused the API key: no prompt of the stage can succeed."""


class RequestsStopped(RuntimeError):
    """`stop_requests()` was called (a stop signal): no request is sent any more."""


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
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"slim-rec/{_package_version()}",
        }
        key = self.api_key
        if not key and self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"teacher: environment variable {self.api_key_env} is not set (the API key)"
                )
        if key:
            if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
                # h11 would refuse the header and quote it in its error message
                source = f"environment variable {self.api_key_env}" if not self.api_key else "key"
                raise ConfigError(
                    f"teacher: the API key in {source} contains spaces, line breaks or other "
                    "characters an HTTP header cannot carry"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    # Runtime state, not a setting: an event loop in a daemon thread with its HTTP clients,
    # kept from one batch to the next (see `generate`).
    _runner: _LoopRunner | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def generate(
        self, prompts: list[str], decoding: Decoding
    ) -> list[Generation | GenerationFailure]:
        """Answer one batch, results in prompt order (see `generate_each`)."""
        results: list[Generation | GenerationFailure | None] = [None] * len(prompts)
        for index, result in self.generate_each(prompts, decoding):
            results[index] = result
        return results  # type: ignore[return-value]  # every index was filled

    def generate_each(
        self, prompts: list[str], decoding: Decoding
    ) -> Iterator[tuple[int, Generation | GenerationFailure]]:
        """(index in `prompts`, result) as each answer arrives, `max_concurrency` requests in
        flight: a caller can write answers while the next requests already run, instead of
        letting the connections idle at the end of every batch. A request starts only while
        fewer than 2 x `max_concurrency` are in flight or answered but not yet taken: a caller
        busy writing is not outrun, and one that is merely slow to wake up (another thread)
        does not hold the next requests back. Closing the iterator early cancels the requests
        still running.

        The event loop and its kept-alive connections outlive the call: a new loop per batch
        opened `max_concurrency` new connections every time. Callers in several threads share
        one bounded concurrency; a caller inside a running event loop works too (the requests
        run on the backend's own loop)."""
        with self._lock:
            if self._runner is None:
                self._runner = _LoopRunner()
                # stops the thread and closes the connections once the backend is collected
                weakref.finalize(self, self._runner.shutdown)
            runner = self._runner
        if runner.stopped:
            raise RequestsStopped("teacher requests were stopped (a stop signal); none sent")
        arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()
        credits = asyncio.Semaphore(2 * self.max_concurrency)  # one back per result taken

        async def ask_all() -> None:
            self._connect(runner)

            params = decoding.as_dict()  # once, not once per request

            async def ask(index: int, prompt: str) -> None:
                await credits.acquire()
                arrived.put((index, await self._one(runner, prompt, params)))

            await asyncio.gather(*(ask(i, p) for i, p in enumerate(prompts)))

        future = asyncio.run_coroutine_threadsafe(ask_all(), runner.loop)
        future.add_done_callback(lambda _: arrived.put(_FINISHED))
        runner.futures.add(future)
        if runner.stopped:  # stopped since the check above: this call was not yet cancelled
            future.cancel()
        try:
            for _ in prompts:
                item = arrived.get()
                if item is _FINISHED:  # the loop stopped before every answer came back
                    if runner.stopped:
                        raise RequestsStopped(
                            "teacher requests stopped by a stop signal; answers received so "
                            "far are kept"
                        )
                    future.result()  # raises its error
                    raise RuntimeError("the HTTP client stopped before every prompt was answered")
                runner.loop.call_soon_threadsafe(credits.release)
                _, result = item
                if isinstance(result, GenerationFailure) and result.status in AUTH_STATUS:
                    source = self.api_key_env if not self.api_key else "the configured key"
                    raise AuthenticationError(
                        f"teacher: {self.base_url} refused the API key ({result.error}); check "
                        f"{source} and the endpoint's access rules. No more prompts are sent."
                    )
                yield item
        finally:
            future.cancel()  # no-op when done; otherwise the requests in flight stop
            runner.futures.discard(future)

    def stop_requests(self) -> None:
        """Cancel every request in flight and every backoff wait, and refuse new ones. Answers
        already handed to a caller are its to write (the teacher writes them on the way out).
        Safe to call from a signal handler (it takes no lock)."""
        runner = self._runner
        if runner is not None:
            runner.stop()

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

    def _connect(self, runner: _LoopRunner) -> None:
        """Create the clients on the runner's loop, once."""
        if runner.idle is None:
            headers = self._headers()  # reads and checks the key once
            runner.key = headers.get("Authorization", "Bearer ")[len("Bearer ") :]
            try:  # HTTP(S)_PROXY, ALL_PROXY and NO_PROXY from the environment (trust_env)
                # One verifying TLS context for every connection (loading the CA bundle takes
                # ~20 ms): certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR (a company CA).
                tls = httpx.create_ssl_context()
                clients = [self._client(headers, tls) for _ in range(self.max_concurrency)]
            except (ImportError, ValueError) as error:  # e.g. socks5:// without httpx[socks]
                proxies = urllib.request.getproxies()
                scheme = urllib.request.urlparse(self.base_url).scheme
                proxy = proxies.get(scheme) or proxies.get("all") or ""
                raise ConfigError(
                    f"teacher: proxy scheme {proxy.partition('://')[0]!r} is not supported "
                    f"({error}); use an http:// or https:// proxy in HTTP_PROXY / HTTPS_PROXY"
                ) from None
            runner.clients = clients
            runner.idle = asyncio.Queue()
            for client in clients:
                runner.idle.put_nowait(client)

    def _client(self, headers: dict[str, str], tls: ssl.SSLContext) -> httpx.AsyncClient:
        """A client of one connection. httpx's pool scans all its connections in Python on
        every request and every reply: one pool of 64 connections reached 24% of concurrency /
        latency at 200 ms and 64 in flight, 64 pools of one 89.7% (`benchmarks/teacher.py`).
        The queue of idle clients is the concurrency bound."""
        return httpx.AsyncClient(
            base_url=self.base_url.rstrip("/") + "/",
            headers=headers,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=None,  # one timeout for the whole request, in `_one`
            verify=tls,
        )

    async def _one(
        self, runner: _LoopRunner, prompt: str, params: dict[str, float | int]
    ) -> Generation | GenerationFailure:
        assert runner.idle is not None
        content = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                **params,
            }
        ).encode()
        error, status, billed = "not attempted", None, False
        for attempt in range(1, self.max_retries + 2):
            wait: float | None = None
            client = await runner.idle.get()  # waiting for a free connection is not timed
            try:
                started = time.perf_counter()
                try:
                    # One timeout for the whole request: connecting, sending, waiting, reading.
                    async with asyncio.timeout(self.timeout_s):
                        response = await client.post("chat/completions", content=content)
                except (TimeoutError, httpx.TimeoutException):
                    status, billed = None, True  # it may have been answering, and billing
                    error = f"TimeoutError: no complete reply within {self.timeout_s} s"
                except (httpx.TransportError, OSError) as exc:
                    status = None
                    error = f"{type(exc).__name__}: request failed ({_redacted(str(exc), runner)})"
                else:
                    status = response.status_code
                    if status == 200:
                        parsed = _parse(response.content)
                        if isinstance(parsed, str):
                            error, billed = _redacted(parsed, runner), True
                        else:
                            text, tokens_in, tokens_out = parsed
                            return Generation(
                                text, tokens_in, tokens_out, time.perf_counter() - started, attempt
                            )
                    else:
                        # the body too: an endpoint may echo the request's headers
                        error = f"HTTP {status}: {_redacted(_text(response.content), runner)}"
                        if status not in RETRYABLE_STATUS:
                            return GenerationFailure(error, attempt, status=status)
                        wait = _retry_after(response.headers.get("retry-after"))
                        if wait is not None and wait > self.max_backoff_s:
                            return GenerationFailure(
                                f"{error} (Retry-After {wait:g} s is past max_backoff_s "
                                f"{self.max_backoff_s:g} s: not waiting)",
                                attempt,
                                status=status,
                            )
            finally:
                runner.idle.put_nowait(client)  # the connection is free while this prompt backs off
            if attempt <= self.max_retries:
                delay = wait if wait is not None else self.backoff_s * 2 ** (attempt - 1)
                # jitter: retries do not arrive in step; never past the cap
                delay = min(self.max_backoff_s, delay * (1 + 0.25 * random.random()))
                log.info("retrying in %.2f s after: %s", delay, error)
                await asyncio.sleep(delay)
        return GenerationFailure(error, self.max_retries + 1, status=status, billed=billed)


class _LoopRunner:
    """An asyncio event loop in a daemon thread, and the HTTP clients that live on it."""

    def __init__(self) -> None:
        self.futures: set[Future] = set()  # the `generate_each` calls running on this loop
        self.stopped = False
        self.clients: list[httpx.AsyncClient] = []
        self.idle: asyncio.Queue[httpx.AsyncClient] | None = None  # not in a request
        self.key = ""  # the API key, to redact from error texts
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="slim-openai-http", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        """Refuse new calls and cancel the running ones (thread-safe: `Future.cancel` hands the
        cancellation to the loop)."""
        self.stopped = True
        for future in list(self.futures):
            future.cancel()

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


def _package_version() -> str:
    try:
        return version("slim-rec")
    except Exception:  # running from a source tree that is not installed
        return "dev"


# What looks like a credential in a reply an endpoint echoes: "Bearer <token>",
# "Authorization: <value>", "api_key": "<value>".
_CREDENTIALS = [
    (re.compile(r"(?i)\bbearer\s+[^\s\"',;}]+"), "Bearer ***"),
    (
        re.compile(
            r"(?i)\b((?:authorization|x-api-key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+"
        ),
        r"\1***",
    ),
]


def _redacted(text: str, runner: _LoopRunner) -> str:
    """`text` without this backend's key or anything that looks like a credential, at most 300
    characters: error texts are stored in the dead-letter table and logged."""
    if runner.key:
        text = text.replace(runner.key, "***")
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text[:300]


def _text(content: bytes) -> str:
    """The start of a reply body, for an error text. Longer than what is kept (`_redacted` cuts
    it to 300 characters), so that a key straddling the cut is still found and redacted."""
    return content[:4096].decode("utf-8", errors="replace")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)  # inf stays inf: past any cap


def _parse(content: bytes) -> tuple[str, int, int] | str:
    """(text, prompt tokens, completion tokens), or an error message for a malformed reply."""
    try:
        data = json.loads(content)
        text = data["choices"][0]["message"]["content"]
        usage = data.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return f"malformed reply: {_text(content)!r}"
    if not isinstance(text, str):
        return f"malformed reply: content is {type(text).__name__}"
    return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
