"""Benchmark Prefect's overhead per task and per flow against the demo's run time.

Why this exists: every SLIM stage is a Prefect task (one per shard of work, never one per LLM
call) so that runs are cached, retried and visible in the UI. That bookkeeping must stay small
beside the work: target under 5% of a demo run.

Measures, in one process against a temporary local Prefect server (what `slim run` uses when
PREFECT_API_URL is unset): the server's start-up, then a flow of N trivial tasks vs the same
function calls without Prefect. Overhead of a demo run = start-up + tasks x per-task overhead,
with the demo's task count read from the flow it runs.

    python benchmarks/prefect_overhead.py --tasks 60 --demo-seconds 1260

Writes `benchmarks/results/prefect_overhead.json`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import write_results  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60, help="trivial tasks per flow")
    parser.add_argument("--demo-tasks", type=int, default=45, help="task runs in a demo run")
    parser.add_argument("--demo-seconds", type=float, default=1260.0, help="a fresh demo run")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    def work(n: int) -> int:
        return sum(range(1000)) + n

    traced = task(work, name="noop")

    @flow(name="overhead")
    def many(n: int) -> int:
        return sum(traced(i) for i in range(n))

    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        startup = time.perf_counter() - started
        many(2)  # warm-up: first flow run registers the flow
        started = time.perf_counter()
        many(args.tasks)
        with_prefect = time.perf_counter() - started
    started = time.perf_counter()
    sum(work(i) for i in range(args.tasks))
    plain = time.perf_counter() - started

    per_task = (with_prefect - plain) / args.tasks
    demo_overhead = startup + args.demo_tasks * per_task
    share = demo_overhead / args.demo_seconds
    print("| measure | value |\n|---|---:|")
    print(f"| temporary server start-up | {startup:.2f} s |")
    print(f"| flow of {args.tasks} trivial tasks | {with_prefect:.2f} s |")
    print(f"| overhead per task | {1000 * per_task:.1f} ms |")
    print(f"| demo: start-up + {args.demo_tasks} tasks | {demo_overhead:.1f} s |")
    print(f"| share of a {args.demo_seconds:.0f} s demo run | {100 * share:.2f}% |")
    print(("PASS" if share < 0.05 else "FAIL") + ": Prefect overhead under 5% of a demo run")
    write_results(
        RESULTS / "prefect_overhead.json",
        {
            "settings": vars(args),
            "startup_s": startup,
            "flow_s": with_prefect,
            "plain_s": plain,
            "per_task_s": per_task,
            "demo_overhead_s": demo_overhead,
            "share": share,
        },
    )


if __name__ == "__main__":
    main()
