"""Benchmark the teacher stage's two backends.

Why this exists: the teacher is the pipeline's most expensive stage. Against a paid endpoint its
speed is bounded by latency and the concurrency we keep in flight, so the HTTP backend must
turn concurrency into throughput with little overhead; a local model must use batching to be
worth running at all.

(a) HTTP: a real OpenAI-compatible server on loopback answers every request after a fixed
    200 ms: by default the lean asyncio server in `benchmarks/openai_loopback.py`, or with
    `--server threaded` the test suite's fault-injecting server (faults off), which costs about
    as much CPU per request as the client it serves. For concurrency 1..64 the whole
    teacher path runs (`ask_teacher`: cache lookup, backend, parsing, one cache file per batch
    of 4 x concurrency prompts) on `rounds` x concurrency distinct prompts, with a new backend
    (new connections) for each concurrency. The default 24 rounds is 1,536 prompts at 64, the
    size of a teacher run in the paper (1,000-2,000 users); `--rounds 8` shows the start-up
    share. Targets (issue 26), throughput as a share of concurrency / latency: >= 95% at 2 s
    an answer (what an API answers in), >= 80% at 200 ms, at every concurrency up to 64.
(b) Local: `TransformersBackend` on a real small model (a shipped GGUF model, dequantised),
    the same prompts one by one and as one batch; generated tokens per second.

    python benchmarks/teacher.py                      # both parts
    python benchmarks/teacher.py --skip-local         # HTTP only (seconds)
    python benchmarks/teacher.py --skip-local --latency 0.2 2 --concurrency 8 64
    python benchmarks/teacher.py --local-model smollm2-135m-instruct --local-prompts 8

Writes `benchmarks/results/teacher.json` and prints the tables.
"""

from __future__ import annotations

import argparse
import os
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
SERVER = """
import time
from tests.fake_openai import FakeOpenAI
server = FakeOpenAI(latency_s={latency}).start()
print(server.url, flush=True)
while True:
    time.sleep(3600)
"""


def http_benchmark(
    concurrencies: list[int], latency_s: float, rounds: int, batch_rounds: int, server_kind: str
) -> list[dict]:
    from slim_core.llm.openai_http import OpenAICompatibleBackend

    # The server runs in its own process: in this one it would share the GIL with the client
    # and measure Python's HTTP server instead of the teacher client.
    command = (
        [sys.executable, "-c", SERVER.format(latency=latency_s)]
        if server_kind == "threaded"
        else [
            sys.executable,
            str(ROOT / "benchmarks" / "openai_loopback.py"),
            "--latency",
            str(latency_s),
        ]
    )
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


LOCAL_PROMPTS = [
    "A user bought, in order: {items}. In three steps, say (1) what the user likes, "
    "(2) which categories and brands fit, (3) which items to recommend next."
]
ITEMS = [
    "pipette tips, nitrile gloves, a beaker set",
    "soldering iron, flux pen, desoldering braid",
    "safety goggles, lab coat, a fume hood filter",
    "digital caliper, micrometer, a thread gauge",
    "3D printer filament, a nozzle set, a build plate",
    "multimeter, test leads, alligator clips",
    "microscope slides, cover slips, immersion oil",
    "label printer, cable ties, a heat-shrink kit",
    "stainless bolts, a torque wrench, thread locker",
    "pH meter, buffer solutions, a stir plate",
    "hot glue gun, glue sticks, a cutting mat",
    "borosilicate flasks, rubber stoppers, a funnel",
    "air compressor hose, quick couplers, PTFE tape",
    "bench power supply, banana plugs, a breadboard",
    "weighing scale, weigh boats, a spatula set",
    "LED strip, an aluminium channel, a dimmer",
]


def local_benchmark(model_name: str, count: int, max_tokens: int) -> dict:
    import torch

    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.model_files import dequantised_folder

    torch.set_num_threads(os.cpu_count() or 1)
    folder = dequantised_folder(model_name)
    prompts = [LOCAL_PROMPTS[0].format(items=ITEMS[i % len(ITEMS)]) for i in range(count)]
    decoding = Decoding(max_tokens=max_tokens)
    result: dict = {"model": model_name, "prompts": count, "max_tokens": max_tokens}
    backend = TransformersBackend(str(folder), batch_size=1, label=model_name)
    started = time.perf_counter()
    backend.load()
    result["load_seconds"] = time.perf_counter() - started
    backend.generate(prompts[:1], Decoding(max_tokens=4))  # warm-up
    for mode, batch_size in (("one by one", 1), (f"batch {count}", count)):
        backend.batch_size = batch_size
        started = time.perf_counter()
        out = backend.generate(prompts, decoding)
        seconds = time.perf_counter() - started
        tokens = sum(getattr(g, "tokens_out", 0) for g in out)
        result[mode] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        print(f"  {mode:>10}: {tokens} tokens in {seconds:6.1f} s = {tokens / seconds:5.1f} tok/s")
    one, many = result["one by one"], result[f"batch {count}"]
    result["speedup"] = many["tokens_per_s"] / one["tokens_per_s"]
    return result


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
    parser.add_argument(
        "--server",
        choices=["lean", "threaded"],
        default="lean",
        help="loopback server: lean asyncio (default) or the tests' threaded fault injector",
    )
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--local-model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--local-prompts", type=int, default=8)
    parser.add_argument("--local-max-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    http, verdicts = [], []
    for latency in args.latency:
        print(f"(a) HTTP backend, {latency * 1000:.0f} ms per request ({args.server} server)")
        rows = http_benchmark(
            args.concurrency, latency, args.rounds, args.batch_rounds, args.server
        )
        http += rows
        target = TARGET_EFFICIENCY.get(latency, TARGET_EFFICIENCY[0.2])
        worst = min(rows, key=lambda r: r["efficiency"])
        verdicts.append(
            f"{'PASS' if worst['efficiency'] >= target else 'FAIL'} (a) at {latency * 1000:.0f} "
            f"ms: lowest efficiency {worst['efficiency']:.1%} at concurrency "
            f"{worst['concurrency']} (target >= {target:.0%} of concurrency / latency)"
        )
    local = None
    if not args.skip_local:
        print(f"(b) local backend, {args.local_model}, {args.local_prompts} prompts")
        local = local_benchmark(args.local_model, args.local_prompts, args.local_max_tokens)
        verdicts.append(
            f"INFO (b): batch of {args.local_prompts} gives {local['speedup']:.1f}x the "
            f"tokens/s of one by one"
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
    out = RESULTS / ("teacher.json" if not args.skip_local else "teacher_http.json")
    payload = {
        "latencies_s": args.latency,
        "rounds": args.rounds,
        "server": args.server,
        "http": http,
        "local": local,
        "verdicts": verdicts,
    }
    write_results(out, payload)


if __name__ == "__main__":
    main()
