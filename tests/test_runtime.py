"""The flow's Runtime: resources made once, reused, and released by leaving it."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import uuid
import weakref

from slim_core.runtime import Runtime


class Model:
    """Stands for an LLM backend: something big, with a close()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_resource_is_made_once_per_key_and_replaced_by_a_new_key():
    made: list[str] = []

    def load(name: str):
        made.append(name)
        return Model(name)

    with Runtime() as runtime:
        first = runtime.hold("teacher", "a", lambda: load("a"))
        assert runtime.hold("teacher", "a", lambda: load("again")) is first
        student = runtime.hold("student", "s", lambda: load("s"))
        gone = weakref.ref(first)
        second = runtime.hold("teacher", "b", lambda: load("b"))  # one teacher at a time
        assert first.closed and made == ["a", "s", "b"]
        del first
        gc.collect()
        assert gone() is None  # the replaced model left memory

        runtime.release("teacher")  # the stage is done: the next one needs the memory
        assert second.closed and not student.closed
        held = weakref.ref(student)
        del second, student
    gc.collect()
    assert held() is None  # leaving the runtime released the rest


def test_a_copy_sent_elsewhere_carries_no_resource():
    with Runtime() as runtime:
        runtime.hold("teacher", "a", lambda: Model("a"))
        copy = pickle.loads(pickle.dumps(runtime))
        made = []
        copy.hold("teacher", "a", lambda: made.append(1) or Model("a"))
        assert isinstance(copy, Runtime) and copy is not runtime and made == [1]


def stamp_of_this_worker(runtime: Runtime) -> tuple[int, str]:
    """Runs in a worker: the process and the resource its runtime holds (made on first use)."""
    return os.getpid(), runtime.hold("inputs", "stage", lambda: uuid.uuid4().hex)


def test_workers_keep_their_own_resources_between_calls_and_stop_with_the_context():
    with Runtime() as runtime:
        assert runtime.call(stamp_of_this_worker)[0] == os.getpid()  # no pool: here
        with runtime.workers(2, threads=1):
            calls = [runtime.call(stamp_of_this_worker) for _ in range(6)]
            assert multiprocessing.active_children()
        assert not multiprocessing.active_children()
    by_worker: dict[int, set[str]] = {}
    for pid, stamp in calls:
        by_worker.setdefault(pid, set()).add(stamp)
    assert os.getpid() not in by_worker
    assert all(len(stamps) == 1 for stamps in by_worker.values())  # loaded once per worker


def test_a_dask_worker_keeps_what_its_tasks_load():
    """A runtime sent to a Dask worker holds its resources in that worker's runtime, so the
    worker's next task reuses them (a local model loads once per worker, not per batch)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
        Runtime() as runtime,
    ):
        first, second = client.gather(
            [client.submit(stamp_of_this_worker, runtime, pure=False) for _ in range(2)]
        )
    assert first[0] != os.getpid() and first == second
