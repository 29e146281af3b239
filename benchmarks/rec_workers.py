"""Recommender runs one after the other on all threads, or side by side in worker processes.

Why this exists: `recommender.workers` trains several runs at once, each in its own process
with a share of the CPUs. Small SASRec / GRU4Rec models use a second thread poorly (a step is
many small kernels), so on few cores the runs should finish sooner side by side. This script
measures it on the bundled demo data through the shipped flow (`flows.pipeline.train_flow`):
SASRec and GRU4Rec, `id` and `item_text`, the seeds below, plus popularity.

    python benchmarks/rec_workers.py                 # workers 1 and 2, alternating, 2 rounds
    python benchmarks/rec_workers.py --workers 1 2 --rounds 1 --seeds 1

Each setting trains the same runs in the same stage folder (its checkpoints deleted first, so
every run trains again; data and item vectors are reused). Settings alternate within a round
because the machine is shared. Prints a table (wall seconds, ratio to one worker, whether the
metrics equal one worker's) and writes `benchmarks/results/rec_workers.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def config_file(folder: Path, workers: int, threads: int, seeds: list[int]) -> Path:
    """configs/demo.yaml without its LLM stages (the tests' `demo_config`), as this benchmark runs it."""
    from tests.helpers import demo_config

    settings = {"seeds": seeds, "workers": workers, "threads": threads}
    return demo_config(folder, f"workers{workers}.yaml", recommender=settings)


def metric_rows(rows: list[dict]) -> list[tuple]:
    names = ("model", "variant", "seed", "split", "protocol", "ndcg@10", "hit@10")
    return [tuple(round(r[n], 6) if isinstance(r[n], float) else r[n] for n in names) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "rec_workers.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slim-rec-workers-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.path.insert(0, str(ROOT))
    from flows.pipeline import train_flow
    from slim_core.rec.workers import threads_per_worker

    cpus = os.cpu_count() or 1
    threads = {w: threads_per_worker(w, None) for w in args.workers}
    paths = {w: config_file(work, w, threads[w], args.seeds) for w in args.workers}
    train_flow(str(paths[args.workers[0]]))  # data, item vectors, Prefect server: not timed
    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    rows: dict[int, list[tuple]] = {}
    for round_ in range(args.rounds):
        order = args.workers if round_ % 2 == 0 else list(reversed(args.workers))
        for workers in order:
            for checkpoints in (work / "run" / "recommenders").glob("*/checkpoints"):
                shutil.rmtree(checkpoints)
            started = time.perf_counter()
            result = train_flow(str(paths[workers]))["recommenders"]
            seconds[workers].append(time.perf_counter() - started)
            rows[workers] = metric_rows(result.rows)
            print(
                f"round {round_ + 1}, workers {workers}: {seconds[workers][-1]:.1f} s", flush=True
            )
    shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(seconds[args.workers[0]])
    table = []
    for workers in args.workers:
        median = statistics.median(seconds[workers])
        table.append(
            {
                "workers": workers,
                "threads_per_worker": threads[workers],
                "seconds": seconds[workers],
                "median_seconds": median,
                "speedup": base / median,
                "same_metrics": rows[workers] == rows[args.workers[0]],
            }
        )
    runs = len(rows[args.workers[0]]) // 4  # valid/test x full/sampled rows per run
    print(f"\n{runs} runs (demo data, seeds {args.seeds}), {cpus} CPUs")
    print(f"{'workers':>7} {'threads':>7} {'median s':>9} {'speed-up':>8}  same metrics")
    for t in table:
        print(
            f"{t['workers']:>7} {t['threads_per_worker']:>7} {t['median_seconds']:>9.1f} "
            f"{t['speedup']:>7.2f}x  {t['same_metrics']}"
        )
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": cpus, "processor": platform.processor() or platform.machine()},
                "seeds": args.seeds,
                "runs": runs,
                "results": table,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
