"""The long-lived resources of one flow run, held in one object that the flow opens and closes.

Why: an LLM backend (a local model is gigabytes), the recommender worker processes and the
recommender inputs that consecutive runs share are expensive to make, so they are made once and
reused. Held in module globals they outlived the flow that made them and hid from the reader who
passes what; held here they are passed to whoever uses them, and leaving the `with` block
releases every one of them.

    with Runtime() as runtime:
        backend = runtime.hold("teacher", key, lambda: make_backend(...))
        ...
        runtime.release("teacher")   # the next stage needs the memory

A copy sent to another process (a recommender worker, a Dask worker) carries no resource: it
holds them in that process's own runtime, made on first use and kept on the worker's object
(Dask's `Worker`, or the worker process) for its next tasks, and gone with it.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from slim_core.rec import workers

T = TypeVar("T")


class Runtime:
    """Resources by role ("teacher", "student", "recommender inputs", ...), one per role at a time,
    plus the recommender worker processes while `workers()` is open."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Any]] = {}
        # teacher batches in two threads share one backend; `hold` calls `release` under it
        self._lock = threading.RLock()
        self._pool: ProcessPoolExecutor | None = None

    def hold(self, role: str, key: str, load: Callable[[], T]) -> T:
        """The resource of `role` made for `key`: loaded on first use, then reused; a new key
        replaces (and releases) the old one, so one of each role is in memory at a time."""
        with self._lock:
            held = self._held.get(role)
            if held is not None and held[0] == key:
                return held[1]
            del held  # nothing here may keep the old resource alive while the new one loads
            self.release(role)
            resource = load()
            self._held[role] = (key, resource)
            return resource

    def release(self, *roles: str) -> None:
        """Drop the resources of `roles` (every one without arguments) and free their memory."""
        with self._lock:
            dropped = [self._held.pop(r) for r in roles or list(self._held) if r in self._held]
        for _, resource in dropped:
            _close(resource)
        del dropped
        gc.collect()

    def stop_requests(self) -> None:
        """A stop signal: each held resource that can (an HTTP backend) cancels what it has in
        flight and sends nothing more. Takes no lock, so a signal handler may call it."""
        for _, resource in list(self._held.values()):
            stop = getattr(resource, "stop_requests", None)
            if callable(stop):
                stop()

    @contextmanager
    def workers(self, count: int, threads: int | None = None) -> Iterator[None]:
        """While open, `call` runs its function in one of `count` worker processes (none if 1)."""
        with workers.worker_pool(count, threads) as pool:
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None

    def call(self, function: Callable[..., T], *args: object, log_extra: dict | None = None) -> T:
        """`function(runtime, *args)`: in a worker process while `workers()` is open (with that
        process's runtime), else here with this one. `log_extra` tags the worker's log records."""
        if self._pool is None:
            return function(self, *args)
        return workers.submit(self._pool, function, (self, *args), log_extra or {})

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[type, tuple]:
        # Resources never travel between processes: the receiver uses its own runtime.
        return _WorkersRuntime, ()


class _WorkersRuntime(Runtime):
    """A runtime that arrived from another process: what it holds is held by the runtime of
    the worker it runs in, looked up when used (inside the task, where Dask knows its worker)."""

    def hold(self, role: str, key: str, load: Callable[[], T]) -> T:
        return _runtime_of_this_worker().hold(role, key, load)


def _close(resource: object) -> None:
    close = getattr(resource, "close", None)
    if callable(close):
        close()


def _runtime_of_this_worker() -> Runtime:
    """The runtime of the Dask worker or worker process running the caller, kept on its object
    so that its next tasks reuse what this one loads; a fresh one anywhere else."""
    holder: object | None = None
    if "distributed" in sys.modules:  # imported where Dask runs; never imported for this
        from distributed import get_worker

        with contextlib.suppress(ValueError):  # ValueError: not inside a Dask task
            holder = get_worker()
    if holder is None and multiprocessing.parent_process() is not None:
        holder = multiprocessing.current_process()
    if holder is None:
        return Runtime()
    runtime = getattr(holder, "slim_runtime", None)
    if runtime is None:
        runtime = Runtime()
        holder.slim_runtime = runtime  # type: ignore[attr-defined]
    return runtime
