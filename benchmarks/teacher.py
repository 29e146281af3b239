"""Benchmark the teacher stage's HTTP backend: concurrency turned into throughput.

Why this exists: against a paid endpoint the teacher's speed is bounded by latency and the
concurrency kept in flight, so the client must turn concurrency into throughput with little
overhead. A real OpenAI-compatible server on loopback (`benchmarks/openai_loopback.py`, in its
own process) answers every request after a fixed latency; for concurrency 1..64 the whole
teacher path runs (`ask_teacher`: cache lookup, backend, parsing, one cache file per batch of
4 x concurrency prompts) on `rounds` x concurrency distinct prompts, with a new backend (new
connections) for each concurrency. The default 24 rounds is 1,536 prompts at 64, the size of a
teacher run in the paper (1,000-2,000 users). Targets, throughput as a share of concurrency /
latency: >= 95% at 2 s an answer (what an API answers in), >= 80% at 200 ms, at every
concurrency up to 64. (The local backend's batching, measured here once, is settled: its
figures are in docs/benchmarks.md.)

    python benchmarks/teacher.py
    python benchmarks/teacher.py --latency 0.2 2 --concurrency 8 64

Writes `benchmarks/results/teacher_http.json` and prints the table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import write_results  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from slim_core.llm.base import Decoding  # noqa: E402
from slim_core.prompts import Prompt  # noqa: E402
from slim_core.teacher.cache import AnswerCache  # noqa: E402
from slim_core.teacher.run import ask_teacher  # noqa: E402

TARGET_EFFICIENCY = {2.0: 0.95, 0.2: 0.80}  # by server latency (s); others: the 200 ms target


def http_benchmark(
    concurrencies: list[int], latency_s: float, rounds: int, batch_rounds: int
) -> list[dict]:
    from slim_core.llm.openai_http import OpenAICompatibleBackend

    # The server runs in its own process: in this one it would share the GIL with the client
    # and measure Python's HTTP server instead of the teacher client.
    loopback = ROOT / "benchmarks" / "openai_loopback.py"
    command = [sys.executable, str(loopback), "--latency", str(latency_s)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    url = server.stdout.readline().strip()
    rows = []
    try:
        # Imports, the first connections and the first Parquet write (pyarrow initialises on
        # first use: 0.3 s, once per process) off the clock.
        warm = OpenAICompatibleBackend(url, "bench", api_key_env=None, max_concurrency=4)
        with tempfile.TemporaryDirectory() as folder:
            warm_up = [Prompt(i, 1, "bench", f"warm-up {i}", 0) for i in range(8)]
            ask_teacher(warm_up, warm, AnswerCache(Path(folder)), Decoding(), batch_size=4)
        for concurrency in concurrencies:
            count = rounds * concurrency
            prompts = [Prompt(i, 1, "bench", f"bench {concurrency} {i}", 0) for i in range(count)]
            backend = OpenAICompatibleBackend(
                url, "bench", api_key_env=None, max_concurrency=concurrency
            )
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                report = ask_teacher(
                    prompts,
                    backend,
                    AnswerCache(Path(folder)),
                    Decoding(),
                    batch_size=batch_rounds * concurrency,  # a few times the concurrency
                )
                seconds = time.perf_counter() - started
            assert report.answered == count, report
            throughput = count / seconds
            ideal = concurrency / latency_s
            rows.append(
                {
                    "latency_s": latency_s,
                    "concurrency": concurrency,
                    "prompts": count,
                    "batch_size": batch_rounds * concurrency,
                    "seconds": seconds,
                    "answers_per_s": throughput,
                    "ideal_per_s": ideal,
                    "efficiency": throughput / ideal,
                    "p50_latency_s": report.latency_percentiles().get("p50"),
                    "p99_latency_s": report.latency_percentiles().get("p99"),
                }
            )
            print(
                f"  concurrency {concurrency:>3}: {count:>4} prompts in {seconds:6.2f} s, "
                f"{throughput:7.1f}/s of {ideal:6.1f}/s ideal ({throughput / ideal:.0%})",
                flush=True,
            )
    finally:
        server.terminate()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument(
        "--latency", nargs="+", type=float, default=[0.2, 2.0], help="server latency, seconds"
    )
    parser.add_argument("--rounds", type=int, default=24, help="prompts = rounds x concurrency")
    parser.add_argument(
        "--batch-rounds", type=int, default=4, help="batch size = batch-rounds x concurrency"
    )
    args = parser.parse_args()

    http, verdicts = [], []
    for latency in args.latency:
        print(f"HTTP backend, {latency * 1000:.0f} ms per request")
        rows = http_benchmark(args.concurrency, latency, args.rounds, args.batch_rounds)
        http += rows
        target = TARGET_EFFICIENCY.get(latency, TARGET_EFFICIENCY[0.2])
        worst = min(rows, key=lambda r: r["efficiency"])
        verdicts.append(
            f"{'PASS' if worst['efficiency'] >= target else 'FAIL'}: at {latency * 1000:.0f} "
            f"ms: lowest efficiency {worst['efficiency']:.1%} at concurrency "
            f"{worst['concurrency']} (target >= {target:.0%} of concurrency / latency)"
        )
    print(
        "\n| latency ms | concurrency | prompts | seconds | answers/s | ideal/s | efficiency | p50 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in http:
        print(
            f"| {r['latency_s'] * 1000:.0f} | {r['concurrency']} | {r['prompts']} | {r['seconds']:.2f} | "
            f"{r['answers_per_s']:.1f} | {r['ideal_per_s']:.1f} | {r['efficiency']:.1%} | "
            f"{r['p50_latency_s'] * 1000:.0f} |"
        )
    print()
    for verdict in verdicts:
        print(verdict)
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"latencies_s": args.latency, "rounds": args.rounds, "server": "lean", "http": http}
    write_results(RESULTS / "teacher_http.json", payload | {"verdicts": verdicts})


if __name__ == "__main__":
    main()
