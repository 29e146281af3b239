"""Recommender runs side by side in worker processes (`recommender.workers`).

On small data a sequential recommender uses a second CPU thread poorly: on 2 cores, the demo's
runs in two processes of one thread each finish ~1.3x sooner than one after the other on two
threads (docs/benchmarks.md, "Recommender runs in worker processes"). ml-100k's full windows
(long histories) keep both threads busy, and gain nothing. Processes, not threads: every run
seeds torch's global random generator (dropout, sampled negatives), which threads would share,
and the results would depend on timing. Each worker reads a stage's inputs once and keeps them
for its next runs (in its own `Runtime`). The flow opens the pool through `Runtime.workers`.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def threads_per_worker(workers: int, threads: int | None) -> int:
    """Torch threads of each worker: as configured, else the CPUs shared out."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def _start_worker(threads: int, logs: multiprocessing.Queue) -> None:
    import torch

    torch.set_num_threads(threads)
    # Records go to the parent, which logs them as its own (console and Prefect's run log).
    root = logging.getLogger("slim_core")
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(logging.INFO)
    root.propagate = False


class _Relay(logging.Handler):
    """Hand a worker's record to the parent's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


@contextmanager
def worker_pool(workers: int, threads: int | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` processes whose log records reach this process's loggers (none if 1)."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # fork would copy a threaded parent
    logs = context.Queue()
    listener = logging.handlers.QueueListener(logs, _Relay())
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(threads_per_worker(workers, threads), logs),
    )
    listener.start()
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        listener.stop()
        logs.close()


def submit(
    pool: ProcessPoolExecutor, function: Callable[..., T], args: tuple, log_extra: dict
) -> T:
    """`function(*args)` in one of the pool's workers, waited for.

    `log_extra` is set on each record the worker logs meanwhile (the orchestrator's run ids):
    the parent relays worker records from a thread of its own, outside any run's context, so
    without them a run log (the Prefect UI) would never see a worker's epochs."""
    return pool.submit(_tagged, function, log_extra, *args).result()


class _Tag(logging.Filter):
    def __init__(self, extra: dict) -> None:
        super().__init__()
        self.extra = extra

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.update(self.extra)
        return True


def _tagged(function: Callable[..., T], extra: dict, *args: object) -> T:
    """In a worker: `function(*args)` with `extra` on every record it logs."""
    handlers = logging.getLogger("slim_core").handlers
    tag = _Tag({k: str(v) for k, v in extra.items()})
    for handler in handlers:
        handler.addFilter(tag)
    try:
        return function(*args)
    finally:
        for handler in handlers:
            handler.removeFilter(tag)
