"""Benchmark the DuckDB data stage against the same steps written in pandas.

Why this exists: the data stage (`slim_core.data.stage.run_data_stage`) is written in DuckDB SQL
on the claim that it is much faster and leaner than the obvious pandas code. This script checks
that claim on a synthetic interaction log: it runs both implementations side by side, each in its
own subprocess (so peak RSS is per implementation), checks that they write the same artifacts,
and reports median wall time, peak RSS and the speed ratio against the targets
(DuckDB >= 5x faster than pandas, DuckDB peak RSS under 1 GB).

    python benchmarks/data_stage.py                      # 1M interactions, 3 repeats
    python benchmarks/data_stage.py --interactions 100000
    python benchmarks/data_stage.py --one-thread         # also DuckDB on one thread

`--one-thread` adds a third run, DuckDB limited to one thread, in the same rounds: pandas runs
on one core whatever the machine has, DuckDB on all of them, so the one-thread ratio is the
per-core difference and the two ratios together show how much of the speed-up is cores.

Results go to `benchmarks/results/data_stage.json`. A child run (`--run duckdb|pandas`) is an
internal mode: it runs one implementation and prints one JSON line with its timing and RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    machine_info,
    markdown_table,
    peak_rss_mb,
    report_to_parent,
    run_child,
)  # benchmarks/harness.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "data_stage.json"
IMPLEMENTATIONS = ("duckdb", "pandas")
ONE_THREAD = "duckdb-1-thread"  # the DuckDB stage with `threads = 1` (--one-thread)
ARTIFACTS = ("interactions", "items", "sequences")

# Stage settings, the same for both implementations.
K_CORE_USERS = 5
K_CORE_ITEMS = 5
MAX_HISTORY = 50
MIN_SEQUENCE_LENGTH = 3  # leave-one-out: the stage never keeps users with fewer

# Targets the script reports against.
TARGET_SPEEDUP = 5.0
TARGET_DUCKDB_PEAK_MB = 1024.0


# ---------------------------------------------------------------------------------------------
# Synthetic input


def _zipf_weights(n: int, exponent: float, offset: float):
    import numpy as np

    weights = 1.0 / (np.arange(1, n + 1) + offset) ** exponent
    return weights / weights.sum()


def _labels(prefix: str, n: int, rng):
    """String ids in random order, so popularity is not tied to id order."""
    import numpy as np

    return np.char.add(prefix, rng.permutation(n).astype(str))


def generate_log(path: Path, n: int, seed: int) -> dict:
    """Write `n` interactions (user_id, item_id, timestamp) with Zipf-like users and items.

    About n/20 users and n/50 items; hourly timestamps over three years (so some ties); repeated
    (user, item) pairs arise from the skew, and ~1% of rows are exact repeats of another row.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 20, 50), max(n // 50, 20)
    n_copies = n // 100
    base = n - n_copies
    users = rng.choice(n_users, base, p=_zipf_weights(n_users, 0.9, 10))
    items = rng.choice(n_items, base, p=_zipf_weights(n_items, 1.0, 10))
    hours = rng.integers(0, 3 * 365 * 24, base)
    copies = rng.integers(0, base, n_copies)
    order = rng.permutation(n)  # copies end up anywhere in the file
    users = np.concatenate([users, users[copies]])[order]
    items = np.concatenate([items, items[copies]])[order]
    stamps = (1_600_000_000 + 3600 * np.concatenate([hours, hours[copies]]))[order]
    table = pa.table(
        {
            "user_id": pa.array(_labels("u", n_users, rng)[users]),
            "item_id": pa.array(_labels("i", n_items, rng)[items]),
            "timestamp": pa.array(stamps.astype(np.int64)),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return {"rows": n, "user_pool": n_users, "item_pool": n_items, "exact_copies": n_copies}


# ---------------------------------------------------------------------------------------------
# The two implementations (each runs in a child process)


def run_duckdb(
    input_path: Path,
    out: Path,
    threads: int | None,
    memory_limit: str | None,
    temp_directory: Path | None = None,
) -> Path:
    """The project's data stage, called the way the pipeline calls it."""
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
        "duckdb_threads": threads,
        "duckdb_memory_limit": memory_limit,
        "duckdb_temp_directory": None if temp_directory is None else str(temp_directory),
    }
    config = config_from_dict({"run": {"output_dir": str(out)}, "data": data})
    folder = RunFolder(out).stage("data", "bench")
    run_data_stage(config.data, folder)
    return folder.path


def _read_log(input_path: Path):
    """Ids as trimmed strings (categorical), time as float seconds, file order kept."""
    import numpy as np
    import pandas as pd

    raw = pd.read_parquet(input_path, columns=["user_id", "item_id", "timestamp"])
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str).str.strip().astype("category"),
            "item_id": raw["item_id"].astype(str).str.strip().astype("category"),
            "ts": raw["timestamp"].astype("float64"),
            "src_order": np.arange(1, len(raw) + 1),
        }
    )


def _k_core(df, min_user: int, min_item: int):
    """Drop users and items under their minimum, repeating until nothing changes."""
    while True:
        user_n = df.groupby("user_id", observed=True)["ts"].transform("size")
        item_n = df.groupby("item_id", observed=True)["ts"].transform("size")
        keep = (user_n >= min_user) & (item_n >= min_item)
        if keep.all():
            return df
        df = df[keep]


def _sequences(df, keep: int):
    """Per user: the last `keep` items, leave-one-out split and a hash of the raw ids."""
    import hashlib

    import pandas as pd

    tail = df[df["position"] >= df.groupby("user_idx")["position"].transform("size") - keep]
    grouped = tail.assign(raw_id=tail["item_id"].astype(str)).groupby("user_idx", sort=True)
    seq = pd.DataFrame(
        {
            "user_id": grouped["user_id"].first().astype(str),
            "items": grouped["item_idx"].agg(list),
            "raw_items": grouped["raw_id"].agg("\x1f".join),
        }
    )
    seq["train_items"] = seq["items"].str[:-2]
    seq["valid_item"] = seq["items"].str[-2]
    seq["test_item"] = seq["items"].str[-1]
    seq["n_interactions"] = df.groupby("user_idx").size()
    seq["seq_hash"] = [hashlib.md5(s.encode()).hexdigest() for s in seq["raw_items"]]
    return seq.drop(columns="raw_items").reset_index()


def _write(frame, path: Path, schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def _write_artifacts(inter, seq, out: Path) -> None:
    import pyarrow as pa

    i32, f64, text = pa.int32(), pa.float64(), pa.string()
    ids = [("user_idx", i32), ("item_idx", i32), ("user_id", text), ("item_id", text)]
    inter = inter.assign(rating=None, user_id=inter["user_id"].astype(str))
    inter = inter.assign(item_id=inter["item_id"].astype(str))
    cols = [*ids, ("timestamp", f64), ("rating", f64), ("position", i32)]
    _write(inter.rename(columns={"ts": "timestamp"}), out / "interactions.parquet", pa.schema(cols))

    items = inter.groupby("item_idx").agg(
        item_id=("item_id", "first"), n_interactions=("ts", "size")
    )
    fields = ["title", "category", "brand", "description", "text"]
    items = items.reset_index().assign(**dict.fromkeys(fields))
    cols = [("item_idx", i32), ("item_id", text), *((f, text) for f in fields)]
    _write(items, out / "items.parquet", pa.schema([*cols, ("n_interactions", i32)]))

    list_i32 = pa.list_(i32)
    cols = [("user_idx", i32), ("user_id", text), ("items", list_i32), ("train_items", list_i32)]
    cols += [("valid_item", i32), ("test_item", i32), ("n_interactions", i32), ("seq_hash", text)]
    _write(seq, out / "sequences.parquet", pa.schema(cols))


def run_pandas(input_path: Path, out: Path) -> Path:
    """The same steps in idiomatic pandas: same rules, same three Parquet files."""
    df = _read_log(input_path)
    # dedup "first": the earliest time wins, ties by file order (stable sort keeps it).
    df = df.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"], keep="first")
    df = _k_core(df, max(K_CORE_USERS, MIN_SEQUENCE_LENGTH), K_CORE_ITEMS)
    # Categories are sorted strings, so sorting by them is id order (as DuckDB's ORDER BY).
    df = df.sort_values(["user_id", "ts", "item_id", "src_order"], kind="stable")
    df["user_idx"] = df["user_id"].cat.remove_unused_categories().cat.codes.astype("int32") + 1
    df["item_idx"] = df["item_id"].cat.remove_unused_categories().cat.codes.astype("int32") + 1
    df["position"] = df.groupby("user_idx").cumcount().astype("int32")
    seq = _sequences(df, MAX_HISTORY + 1)
    out = out / "data" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    _write_artifacts(df, seq, out)
    return out


def child_main(args: argparse.Namespace) -> None:
    """Run one implementation; print one JSON line (stage time, peak RSS)."""
    sys.path.insert(0, str(ROOT))  # `slim_core` and `storage` without an installed package
    # Import before the clock starts: the timing is the stage's work, not interpreter start-up.
    if args.run == "duckdb":
        import slim_core.data.stage  # noqa: F401
    else:
        import pandas  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    if args.run == "duckdb":
        folder = run_duckdb(args.input, args.out, args.duckdb_threads, args.duckdb_memory_limit)
    else:
        folder = run_pandas(args.input, args.out)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    report = {"seconds": seconds, "peak_rss_mb": peak, "rss_at_start_mb": rss_before}
    report_to_parent({**report, "folder": str(folder)})


# ---------------------------------------------------------------------------------------------
# Parent: run, compare, report


def measure(impl: str, args: argparse.Namespace, input_path: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve())]
    cmd += ["--run", "duckdb" if impl == ONE_THREAD else impl]
    cmd += ["--input", str(input_path), "--out", str(out)]
    threads = 1 if impl == ONE_THREAD else args.duckdb_threads
    if threads:
        cmd += ["--duckdb-threads", str(threads)]
    if args.duckdb_memory_limit:
        cmd += ["--duckdb-memory-limit", args.duckdb_memory_limit]
    return {"implementation": impl, **run_child(cmd, capture=True)}


def compare_outputs(duck: Path, pand: Path) -> dict:
    """Compare every column of every artifact (pandas output cast to DuckDB's schema)."""
    import pyarrow.parquet as pq

    report = {}
    for name in ARTIFACTS:
        a = pq.read_table(duck / f"{name}.parquet")
        b = pq.read_table(pand / f"{name}.parquet").select(a.column_names).cast(a.schema)
        key = ["user_idx", "position"] if name == "interactions" else [a.column_names[0]]
        order = [(k, "ascending") for k in key]
        a, b = a.sort_by(order), b.sort_by(order)
        differ = [c for c in a.column_names if not a[c].equals(b[c])]
        report[name] = {"rows": [a.num_rows, b.num_rows], "differing_columns": differ}
    seq = pq.read_table(duck / "sequences.parquet")
    item_ids = pq.read_table(duck / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    report["counts"] = {
        "users": seq.num_rows,
        "items": len(item_ids),
        "interactions": report["interactions"]["rows"][0],
    }
    report["raw_sequences_equal"] = raw_sequences(duck) == raw_sequences(pand)
    report["agree"] = report["raw_sequences_equal"] and not any(
        report[n]["differing_columns"] or len(set(report[n]["rows"])) > 1 for n in ARTIFACTS
    )
    return report


def raw_sequences(folder: Path) -> dict[str, list[str]]:
    """Raw user id -> raw item ids of the stored sequence, read through the items table."""
    import pyarrow.parquet as pq

    items = pq.read_table(folder / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
    by_idx = dict(zip(items["item_idx"], items["item_id"], strict=True))
    seq = pq.read_table(folder / "sequences.parquet", columns=["user_id", "items"]).to_pydict()
    return {
        user: [by_idx[i] for i in idx]
        for user, idx in zip(seq["user_id"], seq["items"], strict=True)
    }


def summarise(runs: list[dict], implementations: tuple[str, ...]) -> dict:
    out = {}
    for impl in implementations:
        mine = [r for r in runs if r["implementation"] == impl]
        out[impl] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
        }
    for impl in implementations:  # pandas' time over each implementation's
        out[impl]["speedup"] = out["pandas"]["median_seconds"] / out[impl]["median_seconds"]
    out["ratio"] = out["duckdb"]["speedup"]
    if ONE_THREAD in out:
        out["duckdb_thread_scaling"] = (
            out[ONE_THREAD]["median_seconds"] / out["duckdb"]["median_seconds"]
        )
    return out


def print_report(summary: dict, check: dict, settings: dict) -> list[str]:
    counts = check["counts"]
    table = [
        [impl, f"{s['median_seconds']:.2f}", f"{s['peak_rss_mb']:.0f}", f"{s['speedup']:.2f}x"]
        for impl in (*IMPLEMENTATIONS, ONE_THREAD)
        if (s := summary.get(impl))
    ]
    header = ["implementation", "median wall s", "peak RSS MB", "pandas / this"]
    print("\n" + markdown_table(header, table))
    if ONE_THREAD in summary:
        print(
            f"DuckDB on all cores is {summary['duckdb_thread_scaling']:.2f}x DuckDB on one thread"
        )
    print(
        f"\noutputs agree: {check['agree']} ({counts['users']:,} users, {counts['items']:,} items, "
        f"{counts['interactions']:,} interactions)"
    )
    if "one_thread_agrees" in check:
        print(f"one-thread DuckDB output agrees: {check['one_thread_agrees']}")
    for name in ARTIFACTS:
        if check[name]["differing_columns"] or len(set(check[name]["rows"])) > 1:
            print(
                f"  {name}: rows {check[name]['rows']}, differ: {check[name]['differing_columns']}"
            )
    print(f"duckdb settings: {settings}")
    verdicts = [
        f"{'PASS' if summary['ratio'] >= TARGET_SPEEDUP else 'FAIL'}: DuckDB speed-up over pandas "
        f"{summary['ratio']:.2f}x (target >= {TARGET_SPEEDUP:g}x)",
        f"{'PASS' if summary['duckdb']['peak_rss_mb'] < TARGET_DUCKDB_PEAK_MB else 'FAIL'}: DuckDB "
        f"peak RSS {summary['duckdb']['peak_rss_mb']:.0f} MB (target < {TARGET_DUCKDB_PEAK_MB:g} MB)",
    ]
    print("\n".join(verdicts))
    return verdicts


def parent_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="slim-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / f"interactions_{args.interactions}_{args.seed}.parquet"
    start = time.perf_counter()
    log_info = generate_log(input_path, args.interactions, args.seed)
    print(
        f"wrote {args.interactions:,} interactions to {input_path} in {time.perf_counter() - start:.1f}s"
    )

    implementations = (*IMPLEMENTATIONS, ONE_THREAD) if args.one_thread else IMPLEMENTATIONS
    runs = []
    for repeat in range(args.repeats):
        # Alternate which goes first, so neither always gets the cooler cache.
        order = implementations if repeat % 2 == 0 else implementations[::-1]
        for impl in order:
            run = measure(impl, args, input_path, workdir / "out" / impl)
            runs.append({"repeat": repeat, **run})
            print(
                f"repeat {repeat + 1} {impl:7s} {run['seconds']:6.2f}s  {run['peak_rss_mb']:6.0f} MB"
            )

    folders = {r["implementation"]: Path(r["folder"]) for r in runs[-len(implementations) :]}
    check = compare_outputs(folders["duckdb"], folders["pandas"])
    if ONE_THREAD in folders:  # the thread count changes speed only, never the tables
        check["one_thread_agrees"] = compare_outputs(folders["duckdb"], folders[ONE_THREAD])[
            "agree"
        ]
    summary = summarise(runs, implementations)
    settings = {"threads": args.duckdb_threads or "default (all cores)"}
    settings["memory_limit"] = args.duckdb_memory_limit or "default (80% of RAM)"
    verdicts = print_report(summary, check, settings)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine_info("duckdb", "pandas", "pyarrow", "numpy"),
        "parameters": {
            "interactions": args.interactions,
            "seed": args.seed,
            "repeats": args.repeats,
            "k_core_users": K_CORE_USERS,
            "k_core_items": K_CORE_ITEMS,
            "max_history": MAX_HISTORY,
            "dedup": "first",
            "duckdb": settings,
            "one_thread_run": args.one_thread,
            "input": log_info,
        },
        "runs": runs,
        "summary": summary,
        "check": check,
        "verdicts": verdicts,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep input and outputs here (default: temp)")
    parser.add_argument("--duckdb-threads", type=int, help="DuckDB threads (default: all cores)")
    parser.add_argument("--duckdb-memory-limit", help="DuckDB memory limit, e.g. 800MB")
    parser.add_argument(
        "--one-thread",
        action="store_true",
        help="also run DuckDB on one thread, to separate per-core speed from parallelism",
    )
    parser.add_argument("--run", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    arguments = parse_args()
    (child_main if arguments.run else parent_main)(arguments)  # a child runs one measurement


if __name__ == "__main__":
    main()
