"""How each stage's cost grows with the log: 1M, 10M (and 50M) interactions, DuckDB against
Polars and pandas for the data stage (issue 28).

Why this exists: users with real logs (Amazon Reviews categories run to tens of millions of
reviews) need to know how time and memory grow with their data, and how the data stage compares
with what they would write instead. Every measurement runs in its own child process
(`harness.run_child`), so its peak RSS is its own.

Input: a synthetic log per size with a realistic long tail, generated in chunks and cached in
`--workdir`: Zipf item popularity, lognormal history lengths, string ids, hourly timestamps
(some ties), ~1% exact repeated rows. Items grow from 10k at 1M to 1M at 50M (a power law
through both), users are n/10 (mean history 10) up to 5M.

Stages, one row each per size:
- data: the project's DuckDB data stage, and the same steps in Polars (lazy, streaming engine,
  `polars_stage.run_polars`) and pandas (`pandas_stage.run_pandas`); outputs checked identical
  to DuckDB's (`pandas_stage.compare_outputs`).
- negatives: the sampled protocol's negatives as the recommender stage draws them
  (`slim_core.rec.stage.load_negatives`: both splits, drawn and written).
- evaluation: one full-ranking pass over every user's test target with an untrained SASRec
  (`rank_targets` / `full_ranks`); timed on `--eval-users` users, extrapolated to all.
- epoch: one SASRec training epoch (the project's windows, batches and training step), timed
  on `--epoch-batches` batches, extrapolated to all windows; `--epoch-loss bce` trains on
  sampled negatives instead of the full softmax (write those rows to a `--results` of their
  own: they share the CE rows' key).
- prompts: the student's prompts for every user at its three cutoffs (`student_prompts`).

    python benchmarks/scale.py                               # 1M and 10M
    python benchmarks/scale.py --sizes 1e6 --stages data     # one size, the data stage only
    python benchmarks/scale.py --sizes 5e7 --engines duckdb polars --duckdb-memory-limit 6GB \\
        --duckdb-temp-directory /data/spill
    python benchmarks/scale.py --report-only                 # table and curve of the JSON

A child above `--memory-cap-mb` is killed and its row says "out of memory" (so does one that
raised MemoryError or DuckDB's OutOfMemoryException), a child past `--child-timeout` "timed
out": `seconds` is null there, never a guess.

Rows are merged into `benchmarks/results/scale.json` (`{"rows": [...]}`, one per stage, engine
and size; a rerun replaces the rows it measures again) and drawn in `results/scale.png`.
A child run (`--run STAGE`) is an internal mode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

from harness import (
    machine_info,
    markdown_table,
    memory_mb,
    merge_rows,
    peak_rss_mb,
    report_to_parent,
)
from harness import run_child as harness_run_child

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
STAGES = ("data", "negatives", "evaluation", "epoch", "prompts")
ENGINES = ("duckdb", "polars", "pandas")
PROJECT = "duckdb"  # the engine named on rows of stages that run the project's own code

# The synthetic log's shape (issue 28: items from 10k to 1M, users up to 5M).
ITEMS_AT_1M, ITEMS_AT_50M = 10_000, 1_000_000
MEAN_HISTORY = 10
MAX_USERS = 5_000_000
HISTORY_SIGMA = 1.0  # lognormal: median history ~0.6 of the mean, a long tail of heavy users
ITEM_EXPONENT, ITEM_OFFSET = 1.0, 10.0  # Zipf popularity, 1 / (rank + offset)^exponent
HOURS = 3 * 365 * 24  # timestamps: an hour over three years, so some of a user's items tie
CHUNK_ROWS = 2_000_000  # generated and written this many rows at a time
LOG_VERSION = 1  # bump when the generator changes: cached logs are then made again

# Targets of issue 28.
TARGET_PEAK_MB = 8 * 1024  # at 50M, every stage
TARGET_SLOPE = 1.0  # log(seconds) against log(interactions): at most linear


# ---------------------------------------------------------------------------------------------
# Synthetic input


def log_shape(n: int) -> tuple[int, int]:
    """(users, items) of a log of `n` interactions."""
    exponent = math.log(ITEMS_AT_50M / ITEMS_AT_1M) / math.log(50)
    items = max(100, round(ITEMS_AT_1M * (n / 1e6) ** exponent))
    return max(10, min(n // MEAN_HISTORY, MAX_USERS)), items


def history_lengths(rng, users: int, n: int):
    """Interactions per user: lognormal, scaled to sum to exactly `n` (a few users get 0)."""
    import numpy as np

    raw = rng.lognormal(0.0, HISTORY_SIGMA, users)
    counts = np.floor(raw * (n / raw.sum())).astype(np.int64)
    counts[rng.choice(users, n - int(counts.sum()), replace=False)] += 1
    return counts


def _user_chunks(counts, rows: int):
    """(first, stop) user ranges of about `rows` interactions each."""
    import numpy as np

    ends = np.cumsum(counts)
    user = 0
    while user < len(counts):
        first_row = int(ends[user] - counts[user])
        stop = max(int(np.searchsorted(ends, first_row + rows, side="right")), user + 1)
        yield user, stop
        user = stop


def _labels(prefix: str, codes):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(prefix, pa.array(codes).cast(pa.string()), "")


def _chunk(rng, users, item_cdf, user_labels, item_labels):
    """One chunk's rows in random order, ~1% of them exact copies of another row."""
    import numpy as np
    import pyarrow as pa

    m = len(users)
    items = np.searchsorted(item_cdf, rng.random(m) * item_cdf[-1], side="right")
    items = np.minimum(items, len(item_cdf) - 1)
    hours = rng.integers(0, HOURS, m)
    copies = rng.choice(m, m // 100, replace=False)
    source = rng.integers(0, m, len(copies))
    users[copies], items[copies], hours[copies] = users[source], items[source], hours[source]
    order = rng.permutation(m)
    return pa.table(
        {
            "user_id": _labels("u", user_labels[users[order]]),
            "item_id": _labels("i", item_labels[items[order]]),
            "timestamp": pa.array(1_600_000_000 + 3600 * hours[order]),
        }
    )


def generate_log(path: Path, n: int, seed: int) -> dict:
    """Write the log of `n` interactions to `path`, chunk by chunk; its shape."""
    import numpy as np
    import pyarrow.parquet as pq

    rng = np.random.default_rng([seed, n])
    n_users, n_items = log_shape(n)
    counts = history_lengths(rng, n_users, n)
    ranks = np.arange(1, n_items + 1)
    item_cdf = np.cumsum(1.0 / (ranks + ITEM_OFFSET) ** ITEM_EXPONENT)
    # Ids in random order, so that neither popularity nor file position follows id order.
    user_labels, item_labels = rng.permutation(n_users), rng.permutation(n_items)
    writer = None
    for first, stop in _user_chunks(counts, CHUNK_ROWS):
        users = np.repeat(np.arange(first, stop), counts[first:stop])
        table = _chunk(rng, users, item_cdf, user_labels, item_labels)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
    writer.close()
    lengths = counts[counts > 0]
    return {
        "interactions": n,
        "users": int(len(lengths)),
        "item_pool": n_items,
        "median_history": float(np.median(lengths)),
        "p99_history": float(np.quantile(lengths, 0.99)),
    }


def ensure_log(workdir: Path, n: int, seed: int) -> tuple[Path, dict]:
    """The cached log of `n` interactions (generated on first use) and its shape."""
    path = workdir / f"log_{n}_{seed}_v{LOG_VERSION}.parquet"
    shape_file = path.with_suffix(".json")
    if path.is_file() and shape_file.is_file():
        return path, json.loads(shape_file.read_text())
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    shape = generate_log(partial, n, seed)
    partial.rename(path)
    shape_file.write_text(json.dumps(shape))
    print(f"generated {n:,} interactions in {time.perf_counter() - started:.0f}s: {shape}")
    return path, shape


# ---------------------------------------------------------------------------------------------
# Child: one stage, measured in its own process


def run_duckdb(
    input_path: Path, out: Path, memory_limit: str | None, temp_directory: Path | None
) -> Path:
    """The project's data stage, called the way the pipeline calls it."""
    from pandas_stage import K_CORE_ITEMS, K_CORE_USERS, MAX_HISTORY

    from slim_core.config import config_from_dict
    from slim_core.data.stage import run_data_stage
    from storage import RunFolder

    data = {
        "source": {
            "format": "table",
            "interactions": str(input_path),
            "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"},
        },
        "k_core_users": K_CORE_USERS,
        "k_core_items": K_CORE_ITEMS,
        "max_history": MAX_HISTORY,
        "dedup": "first",
        "duckdb_memory_limit": memory_limit,
        "duckdb_temp_directory": None if temp_directory is None else str(temp_directory),
    }
    config = config_from_dict({"run": {"output_dir": str(out)}, "data": data})
    folder = RunFolder(out).stage("data", "bench")
    run_data_stage(config.data, folder)
    return folder.path


def child_data(args: argparse.Namespace) -> dict:
    # Import before the clock starts: the timing is the stage's work, not interpreter start-up.
    from pandas_stage import run_pandas
    from polars_stage import run_polars

    import slim_core.data.stage  # noqa: F401

    started = time.perf_counter()
    if args.engine == "duckdb":
        memory = args.duckdb_memory_limit
        folder = run_duckdb(args.input, args.out, memory, args.duckdb_temp_directory)
    elif args.engine == "polars":
        folder = run_polars(args.input, args.out)
    else:
        folder = run_pandas(args.input, args.out)
    return {"seconds": time.perf_counter() - started, "folder": str(folder)}


def child_negatives(args: argparse.Namespace) -> dict:
    from slim_core.config import EvalConfig
    from slim_core.rec.data import load_sequence_data
    from slim_core.rec.stage import load_negatives

    started = time.perf_counter()
    data = load_sequence_data(args.data)
    loaded, rss_loaded = time.perf_counter(), peak_rss_mb()
    load_negatives(data, EvalConfig(), args.out / "negatives.parquet")
    return {
        "seconds": time.perf_counter() - loaded,
        "load_seconds": loaded - started,
        "rss_after_load_mb": rss_loaded,
        "users": data.n_users,
        "items": data.n_items,
    }


def _sasrec(n_items: int, cfg):
    """An untrained SASRec as the recommender stage builds it (the id variant reads no inputs)."""
    from slim_core.rec.stage import build_model
    from slim_core.rec.train import set_seed

    set_seed(0)
    return build_model("sasrec", "id", n_items, cfg, inputs=None)


def child_evaluation(args: argparse.Namespace) -> dict:
    """Full ranking of the test targets on the first `--eval-users` users, scaled to all."""
    from slim_core.config import EvalConfig, RecommenderConfig
    from slim_core.rec.data import EvalInputs, eval_inputs, load_sequence_data
    from slim_core.rec.stage import sequential_scorer
    from slim_core.rec.train import rank_targets

    cfg = RecommenderConfig(device="cpu")
    started = time.perf_counter()
    data = load_sequence_data(args.data)
    inputs = eval_inputs(data, "test", cfg.max_len)  # every user's, as the stage holds them
    model = _sasrec(data.n_items, cfg).eval()
    users = min(args.eval_users, data.n_users)
    part = EvalInputs(
        inputs.users[:users],
        inputs.histories[:users],
        inputs.targets[:users],
        inputs.cutoffs[:users],
        inputs.full_histories[:users],
    )
    ready = time.perf_counter()
    batch = EvalConfig().users_per_batch(data.n_items)  # the default score_memory_mb
    rank_targets(sequential_scorer(model, part, None), part, exclude_history=True, batch_size=batch)
    measured = time.perf_counter() - ready
    return _scaled(measured, users, data.n_users, ready - started, data, measured_users=users)


def child_epoch(args: argparse.Namespace) -> dict:
    """`--epoch-batches` SASRec training batches, scaled to an epoch over every window."""
    import numpy as np
    import torch

    from slim_core.config import RecommenderConfig
    from slim_core.rec.data import load_sequence_data, training_windows
    from slim_core.rec.train import _train_epoch, optimizers, window_batches

    cfg = RecommenderConfig(device="cpu", loss=args.epoch_loss)
    started = time.perf_counter()
    data = load_sequence_data(args.data)
    windows = training_windows(data, cfg.max_len)  # gathered a batch at a time, as in training
    model = _sasrec(data.n_items, cfg)
    batches = window_batches(windows, cfg.batch_size)
    steps = optimizers(model, cfg)  # as training builds them: SparseAdam on BCE's item rows
    ready = time.perf_counter()
    rng = np.random.default_rng(0)
    _train_epoch(model, islice(batches(rng), args.epoch_batches), steps, torch.device("cpu"))
    measured = time.perf_counter() - ready
    trained = min(args.epoch_batches * cfg.batch_size, len(windows))
    return _scaled(
        measured,
        trained,
        len(windows),
        ready - started,
        data,
        windows=len(windows),
        windows_per_second=trained / measured,
        measured_batches=math.ceil(trained / cfg.batch_size),
        batch_size=cfg.batch_size,
    )


def _scaled(measured: float, done: int, total: int, setup: float, data, **extra) -> dict:
    """A child's row from `measured` seconds for `done` of `total` units, scaled to all."""
    return {
        "seconds": measured * total / done,
        "measured_seconds": measured,
        "extrapolated": done < total,
        "setup_seconds": setup,
        "users": data.n_users,
        "items": data.n_items,
        **extra,
    }


def child_prompts(args: argparse.Namespace) -> dict:
    from slim_core.config import StudentConfig
    from slim_core.data import DataStageResult
    from slim_core.student.inference import student_prompts

    cfg = StudentConfig(base_model="unused: prompts only")
    started = time.perf_counter()
    prompts = student_prompts(cfg, DataStageResult(args.data, "bench", {}))
    seconds = time.perf_counter() - started
    characters = sum(len(prompt.text) for _, prompt in prompts)
    return {"seconds": seconds, "prompts": len(prompts), "prompt_characters": characters}


CHILDREN = {
    "data": child_data,
    "negatives": child_negatives,
    "evaluation": child_evaluation,
    "epoch": child_epoch,
    "prompts": child_prompts,
}


def child_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))  # `slim_core` and `storage` without an installed package
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    if args.run in ("evaluation", "epoch"):
        import torch

        # On a machine shared with other jobs, torch's OpenMP threads spin-wait for each other:
        # two threads on two busy cores trained SASRec 15x slower than one.
        torch.set_num_threads(args.torch_threads)
    rss_at_start = peak_rss_mb()
    result = CHILDREN[args.run](args)
    report_to_parent({**result, "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": rss_at_start})


# ---------------------------------------------------------------------------------------------
# Parent: a child per measurement, out-of-memory and time-outs recorded as such


def _children_of_this_process() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


class MemoryCap(threading.Thread):
    """Kills a child of this process whose RSS passes `cap_mb`; that child ran out of memory.

    Why not let it run: on a shared machine the kernel's out-of-memory killer may pick another
    process. The cap and the high-water mark seen are reported with the row.
    """

    def __init__(self, cap_mb: float):
        super().__init__(daemon=True)
        self.cap_mb, self.peak_mb, self.killed = cap_mb, 0.0, False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid in _children_of_this_process():
                rss, high = memory_mb(pid)
                self.peak_mb = max(self.peak_mb, high)
                if rss > self.cap_mb:
                    self.killed = True
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> MemoryCap:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def _failure(text: str, cap: MemoryCap) -> str:
    if cap.killed:
        return f"out of memory: killed above the {cap.cap_mb:,.0f} MB cap"
    if any(mark in text for mark in ("MemoryError", "OutOfMemory", "out of memory", "exit -9")):
        return "out of memory"
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:300]


def run_child(command: list[str], cap_mb: float, timeout_s: float) -> dict:
    """The child's report, or `seconds: None` and why (out of memory, time-out, error)."""
    with MemoryCap(cap_mb) as cap:
        try:
            return harness_run_child(command, capture=True, timeout=timeout_s)
        except SystemExit as failed:
            error = _failure(str(failed.code), cap)
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:.0f} s"
    return {"seconds": None, "peak_rss_mb": cap.peak_mb or None, "error": error}


def child_command(stage: str, engine: str, paths: dict[str, Path], args) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run", stage, "--engine", engine]
    command += ["--input", str(paths["log"]), "--data", str(paths["data"])]
    command += ["--out", str(paths["out"])]
    command += ["--eval-users", str(args.eval_users), "--epoch-batches", str(args.epoch_batches)]
    command += ["--torch-threads", str(args.torch_threads), "--epoch-loss", args.epoch_loss]
    if args.duckdb_memory_limit:
        command += ["--duckdb-memory-limit", args.duckdb_memory_limit]
    if args.duckdb_temp_directory:
        command += ["--duckdb-temp-directory", str(args.duckdb_temp_directory)]
    return command


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def measure(stage: str, engine: str, n: int, log: Path, shape: dict, args) -> dict:
    """One row: the stage on the log of `n` interactions, in a child of its own."""
    size_dir = args.workdir / f"run_{n}"
    out = size_dir / f"{stage}-{engine}"
    _rm(out)
    paths = {"log": log, "data": size_dir / "data-duckdb" / "data" / "bench", "out": out}
    if stage != "data" and not (paths["data"] / "sequences.parquet").is_file():
        report = {"seconds": None, "peak_rss_mb": None, "error": "no DuckDB data stage output"}
    else:
        command = child_command(stage, engine, paths, args)
        report = run_child(command, args.memory_cap_mb, args.child_timeout)
    row = {"stage": stage, "engine": engine, "interactions": n, **report}
    row |= {"log_users": shape["users"], "log_items": shape["item_pool"]}
    row |= settings(stage, engine, args)
    if stage == "data" and engine != "duckdb" and row["seconds"] is not None:
        from pandas_stage import compare_outputs

        row["outputs_match_duckdb"] = compare_outputs(paths["data"], Path(row["folder"]))["agree"]
    if stage == "data" and engine == "duckdb" and row["seconds"] is not None:
        row["kept"] = _kept(paths["data"])
        stats = json.loads((paths["data"] / "stats.json").read_text())
        row["k_core_rounds"] = len(stats["k_core"]["rounds"])  # full passes over the log
    row.pop("folder", None)
    if stage != "data" or engine != "duckdb":
        _rm(out)  # DuckDB's data folder feeds the other stages; the rest is not needed again
    return row


def _kept(folder: Path) -> dict:
    """Users, items and interactions the data stage kept."""
    import pyarrow.parquet as pq

    names = {"users": "sequences", "items": "items", "interactions": "interactions"}
    return {
        what: pq.ParquetFile(folder / f"{name}.parquet").metadata.num_rows
        for what, name in names.items()
    }


def settings(stage: str, engine: str, args) -> dict:
    """The settings a row was measured with (rows of several runs end up in one file)."""
    out: dict = {"memory_cap_mb": args.memory_cap_mb}
    if (stage, engine) == ("data", "duckdb"):
        out["duckdb_memory_limit"] = args.duckdb_memory_limit or "default (80% of RAM)"
        out["duckdb_temp_directory"] = str(args.duckdb_temp_directory or "default (.tmp)")
    if stage in ("evaluation", "epoch"):
        out["torch_threads"] = args.torch_threads
    if stage == "epoch":
        out["loss"] = args.epoch_loss
    return out


def save(rows: list[dict], args) -> list[dict]:
    """Merge `rows` into results/scale.json (by stage, engine and size); every row there."""
    merged = merge_rows(
        args.results, rows, key=lambda r: (r["stage"], r["engine"], r["interactions"])
    )
    payload = json.loads(args.results.read_text())
    payload["machine"] = machine_info("duckdb", "polars", "pandas", "pyarrow", "numpy", "torch")
    args.results.write_text(json.dumps(payload, indent=2) + "\n")
    return merged


# ---------------------------------------------------------------------------------------------
# Report: table, slopes, targets, curve


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x); None under two sizes."""
    if len({x for x, _ in points}) < 2:
        return None
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / sum((x - mean_x) ** 2 for x in xs)


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Measured rows by (stage, engine), in size order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["interactions"]):
        out.setdefault((row["stage"], row["engine"]), []).append(row)
    order = {(s, e): n for n, (s, e) in enumerate((s, e) for s in STAGES for e in ENGINES)}
    return dict(sorted(out.items(), key=lambda item: order.get(item[0], 99)))


def note(row: dict) -> str:
    if row.get("error"):
        return row["error"]
    if row["stage"] == "data":
        if "outputs_match_duckdb" in row:
            return "outputs = DuckDB's" if row["outputs_match_duckdb"] else "OUTPUTS DIFFER"
        kept = row.get("kept", {})
        rounds = f", {row['k_core_rounds']} k-core rounds" if "k_core_rounds" in row else ""
        return f"kept {kept.get('users', 0):,} users, {kept.get('items', 0):,} items{rounds}"
    if row["stage"] == "epoch":
        scaled = f", from {row['measured_batches']} batches" if row["extrapolated"] else ""
        return f"{row['windows']:,} windows at {row['windows_per_second']:,.0f}/s{scaled}"
    if row["stage"] == "evaluation":
        scaled = f", from {row['measured_users']:,}" if row["extrapolated"] else ""
        return f"{row['users']:,} users x {row['items']:,} items{scaled}"
    if row["stage"] == "prompts":
        return f"{row['prompts']:,} prompts"
    return f"{row['users']:,} users, 2 splits x 100"


def _figure(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def tables(rows: list[dict]) -> str:
    series = _series(rows)
    body = [
        [
            s,
            e,
            f"{r['interactions']:,}",
            _figure(r["seconds"]),
            _figure(r["peak_rss_mb"], 0),
            note(r),
        ]
        for (s, e), measured in series.items()
        for r in measured
    ]
    header = ["stage", "engine", "interactions", "seconds", "peak RSS MB", "note"]
    table = markdown_table(header, body, numeric_from=2).split("\n")
    table[1] = table[1].rsplit("|", 2)[0] + "| --- |"  # the note is text: left-aligned
    slopes = []
    for (s, e), measured in series.items():
        ok = [r for r in measured if r["seconds"] is not None]
        if not ok:
            continue
        time_slope = slope([(r["interactions"], r["seconds"]) for r in ok])
        rss_slope = slope([(r["interactions"], r["peak_rss_mb"]) for r in ok])
        sizes = ", ".join(f"{r['interactions'] / 1e6:g}M" for r in ok)
        slopes.append([s, e, sizes, _figure(time_slope, 2), _figure(rss_slope, 2)])
    slope_header = ["stage", "engine", "sizes", "time slope", "RSS slope"]
    return (
        "\n".join(table)
        + "\n\nSlope of log(seconds) and log(peak RSS) against log(interactions):\n\n"
        + markdown_table(slope_header, slopes, numeric_from=3)
    )


def _versus_polars(duckdb: float | None, polars: float | None) -> tuple[bool, str]:
    """(DuckDB at or ahead, the figure): a failed run is behind one that finished."""
    if duckdb is None:
        return False, "DuckDB failed"
    if polars is None:
        return True, "Polars failed"
    return polars >= duckdb, f"{polars / duckdb:.2f}x"


def _polars_verdict(series: dict) -> str:
    times = {
        e: {r["interactions"]: r["seconds"] for r in series.get(("data", e), [])} for e in ENGINES
    }
    sizes = sorted(set(times["duckdb"]) & set(times["polars"]))
    if not sizes:
        return "NOT MEASURED: DuckDB's data stage at or ahead of Polars (no Polars rows)"
    results = [(n, *_versus_polars(times["duckdb"][n], times["polars"][n])) for n in sizes]
    met = all(ahead for _, ahead, _ in results)
    figures = ", ".join(f"{n / 1e6:g}M {figure}" for n, _, figure in results)
    return (
        f"{'MET' if met else 'NOT MET'}: DuckDB's data stage at or ahead of Polars at every size "
        f"(Polars time / DuckDB time: {figures})"
    )


def _memory_verdict(rows: list[dict]) -> str:
    largest = [r for r in rows if r["interactions"] >= 50_000_000 and r["engine"] == PROJECT]
    if not largest:
        return "NOT MEASURED: peak RSS under 8 GB at 50M for every stage (no 50M rows)"
    over = [
        f"{r['stage']} {_figure(r['peak_rss_mb'], 0)} MB"
        for r in largest
        if r["peak_rss_mb"] is None or r["peak_rss_mb"] >= TARGET_PEAK_MB or r["seconds"] is None
    ]
    missing = [s for s in STAGES if s not in {r["stage"] for r in largest}]
    verdict = "NOT MET" if over else "NOT MEASURED" if missing else "MET"
    details = [f"over: {', '.join(over)}"] if over else []
    details += [f"not measured: {', '.join(missing)}"] if missing else []
    extra = f" ({'; '.join(details)})" if details else ""
    return f"{verdict}: peak RSS under 8 GB at 50M for every stage{extra}"


def _slope_verdict(series: dict) -> str:
    slopes = {}
    for (stage, engine), measured in series.items():
        ok = [r for r in measured if r["seconds"] is not None]
        value = slope([(r["interactions"], r["seconds"]) for r in ok])
        if engine == PROJECT and value is not None:
            slopes[stage] = value
    if not slopes:
        return "NOT MEASURED: each stage's time grows at most linearly (one size only)"
    steep = [f"{stage} {value:.2f}" for stage, value in slopes.items() if value > TARGET_SLOPE]
    return f"{'NOT MET' if steep else 'MET'}: each stage's time grows at most linearly" + (
        f" (slope over 1: {', '.join(steep)})" if steep else ""
    )


def verdicts(rows: list[dict]) -> list[str]:
    """The targets of issue 28 for the project's stages, each met or not, with its figures."""
    series = _series(rows)
    return [_polars_verdict(series), _memory_verdict(rows), _slope_verdict(series)]


def _curves(rows: list[dict], time_axis, rss_axis) -> None:
    """A line per stage and engine; a run that failed is a cross at the memory it reached."""
    for n, ((stage, engine), measured) in enumerate(_series(rows).items()):
        color = f"C{n}"
        ok = [r for r in measured if r["seconds"] is not None]
        failed = [r for r in measured if r["seconds"] is None and r["peak_rss_mb"]]
        style = {"duckdb": "-o", "polars": "--s", "pandas": ":^"}[engine]
        label = stage if stage != "data" else f"data ({engine})"
        x = [r["interactions"] for r in ok]
        time_axis.plot(x, [r["seconds"] for r in ok], style, color=color, label=label)
        rss_axis.plot(x, [r["peak_rss_mb"] / 1024 for r in ok], style, color=color, label=label)
        for r in failed:
            rss_axis.plot(r["interactions"], r["peak_rss_mb"] / 1024, "x", color=color, ms=10)


def plot(rows: list[dict], path: Path) -> None:
    """Log-log curves: seconds and peak RSS against interactions, per stage and engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (time_axis, rss_axis) = plt.subplots(1, 2, figsize=(12, 5))
    _curves(rows, time_axis, rss_axis)
    sizes = sorted({r["interactions"] for r in rows})
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for axis, title in ((time_axis, "seconds"), (rss_axis, "peak RSS, GB (x: killed or failed)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks(sizes, [f"{n / 1e6:g}M" for n in sizes])
        axis.yaxis.set_major_formatter(plain)
        axis.set_xlabel("interactions")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    rss_axis.yaxis.set_minor_formatter(plain)  # a decade or two: label the 2, 3, 4 ... too
    # Slope 1 (linear growth) through the smallest size's data stage, for the eye.
    data = [r for r in rows if r["stage"] == "data" and r["seconds"]]
    if data:
        first = min(data, key=lambda r: r["interactions"])
        guide = [first["seconds"] * n / first["interactions"] for n in sizes]
        time_axis.plot(sizes, guide, color="grey", linewidth=0.8, label="linear (slope 1)")
    rss_axis.axhline(TARGET_PEAK_MB / 1024, color="grey", linewidth=0.8, label="8 GB target")
    time_axis.legend(fontsize=8)
    rss_axis.legend(fontsize=8, handles=rss_axis.get_lines()[-1:])
    fig.suptitle("SLIM stages against log size (benchmarks/scale.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------
# Main


def plan(args) -> list[tuple[str, str]]:
    """(stage, engine) in run order: DuckDB's data stage first, as the others read its output."""
    steps = [("data", e) for e in args.engines] if "data" in args.stages else []
    steps += [(s, PROJECT) for s in args.stages if s != "data"]
    return steps


def report(rows: list[dict], results: Path) -> None:
    """Print the table, the slopes and the targets of every row; draw the curve beside the JSON."""
    print("\n" + tables(rows) + "\n")
    print("\n".join(verdicts(rows)))
    if any(row["seconds"] for row in rows):  # nothing to draw on log axes otherwise
        plot(rows, results.with_suffix(".png"))


def parent_main(args: argparse.Namespace) -> None:
    if args.report_only:
        report(json.loads(args.results.read_text())["rows"], args.results)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    merged: list[dict] = []
    for n in args.sizes:
        log, shape = ensure_log(args.workdir, n, args.seed)
        for stage, engine in plan(args):
            started = time.perf_counter()
            row = measure(stage, engine, n, log, shape, args)
            merged = save([row], args)
            print(
                f"{n:>11,} {stage:10s} {engine:7s} {_figure(row['seconds']):>9s} s "
                f"{_figure(row['peak_rss_mb'], 0):>7s} MB  {note(row)} "
                f"({time.perf_counter() - started:.0f}s wall)",
                flush=True,
            )
    report(merged, args.results)
    print(f"wrote {args.results}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "slim-scale",
        help="generated logs (kept and reused) and stage outputs",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="JSON to merge rows into (PNG beside it)"
    )
    parser.add_argument("--duckdb-memory-limit", help="e.g. 4GB (default: DuckDB's, 80%% of RAM)")
    parser.add_argument("--duckdb-temp-directory", type=Path, help="where DuckDB spills")
    parser.add_argument(
        "--memory-cap-mb",
        type=float,
        default=12_000,
        help="a child above this RSS is killed and recorded as out of memory",
    )
    parser.add_argument("--child-timeout", type=float, default=3600, help="seconds per child")
    parser.add_argument("--eval-users", type=int, default=8192, help="users timed in evaluation")
    parser.add_argument("--epoch-batches", type=int, default=100, help="batches timed per epoch")
    parser.add_argument(
        "--epoch-loss",
        choices=["ce", "bce"],
        default="ce",
        help="the epoch's loss: ce scores every item at every position, bce a few negatives",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads for evaluation and epoch"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="table and curve of --results, nothing run"
    )
    parser.add_argument("--run", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=ENGINES, default=PROJECT, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sizes = [int(size) for size in args.sizes]
    return args


def main() -> None:
    arguments = parse_args()
    (child_main if arguments.run else parent_main)(arguments)  # a child runs one measurement


if __name__ == "__main__":
    main()
