"""The data stage's steps in Polars, lazy, on its streaming engine: the peer `scale.py` runs
beside DuckDB and pandas.

The same rules as `pandas_stage.run_pandas` (and the project's DuckDB stage): dedup "first"
(earliest time, ties by file order), iterative k-core, dense ids in id order, chronological
positions with ties by item id then file order, the last `MAX_HISTORY + 1` items per user split
leave-one-out, an md5 of the raw ids; the same three Parquet files, which `scale.py` checks
against DuckDB's with `pandas_stage.compare_outputs`.

Each step is a lazy query collected on the streaming engine. The frame is materialised between
k-core rounds (whether another round is needed depends on the last one), as DuckDB
materialises its `kcore` table each round.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
from pandas_stage import K_CORE_ITEMS, K_CORE_USERS, MAX_HISTORY, MIN_SEQUENCE_LENGTH

STREAMING = "streaming"
TEXT_FIELDS = ("title", "category", "brand", "description", "text")


def _deduped(input_path: Path) -> pl.DataFrame:
    """Ids as trimmed strings, time as float seconds, file order from 1; one row per (user,
    item): the earliest, ties by file order."""
    log = pl.scan_parquet(input_path, row_index_name="src_order", row_index_offset=1).select(
        pl.col("user_id").cast(pl.String).str.strip_chars(),
        pl.col("item_id").cast(pl.String).str.strip_chars(),
        pl.col("timestamp").cast(pl.Float64).alias("ts"),
        pl.col("src_order").cast(pl.Int64),
    )
    first = log.sort("ts", "src_order").unique(["user_id", "item_id"], keep="first")
    return first.collect(engine=STREAMING)


def _k_core(frame: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Drop users and items under their minimum, repeating until nothing changes."""
    while True:
        lazy = frame.lazy()
        users = lazy.group_by("user_id").len().filter(pl.col("len") >= min_user)
        items = lazy.group_by("item_id").len().filter(pl.col("len") >= min_item)
        kept = (
            lazy.join(users, on="user_id", how="semi")
            .join(items, on="item_id", how="semi")
            .collect(engine=STREAMING)
        )
        if kept.height == frame.height:
            return kept
        frame = kept


def _codes(frame: pl.LazyFrame, column: str, name: str) -> pl.LazyFrame:
    """Dense ids from 1 in id (string) order, as DuckDB's row_number() OVER (ORDER BY id)."""
    distinct = frame.select(column).unique().sort(column)
    return distinct.with_row_index(name, offset=1).with_columns(pl.col(name).cast(pl.Int32))


def _ordered(frame: pl.DataFrame) -> pl.DataFrame:
    """The kept log with dense ids and chronological positions, sorted by (user_idx, position)."""
    lazy = frame.lazy()
    ordered = (
        lazy.join(_codes(lazy, "user_id", "user_idx"), on="user_id")
        .join(_codes(lazy, "item_id", "item_idx"), on="item_id")
        # Codes follow id order, so this is (user, time, item id, file order).
        .sort("user_idx", "ts", "item_idx", "src_order")
        .with_columns(
            position=pl.int_range(pl.len(), dtype=pl.Int32).over("user_idx"),
            n=pl.len().over("user_idx").cast(pl.Int32),
        )
    )
    return ordered.collect(engine=STREAMING)


def _md5(raw: pl.Series) -> pl.Series:
    # Polars has no md5; the hash has to match DuckDB's md5() of the joined raw ids.
    return pl.Series([hashlib.md5(text.encode()).hexdigest() for text in raw], dtype=pl.String)


def _sequences(ordered: pl.DataFrame, keep: int) -> pl.LazyFrame:
    """Per user: the last `keep` items, leave-one-out split and the hash of the raw ids."""
    grouped = (
        ordered.lazy()
        .filter(pl.col("position") >= pl.col("n") - keep)
        .group_by("user_idx")
        .agg(
            pl.col("user_id").first(),
            pl.col("item_idx").sort_by("position").alias("items"),
            pl.col("item_id").sort_by("position").str.join("\x1f").alias("raw_items"),
            pl.col("n").first().alias("n_interactions"),
        )
    )
    items = pl.col("items")
    return grouped.sort("user_idx").select(
        "user_idx",
        "user_id",
        items,
        items.list.slice(0, items.list.len() - 2).alias("train_items"),
        items.list.get(-2).alias("valid_item"),
        items.list.get(-1).alias("test_item"),
        "n_interactions",
        pl.col("raw_items").map_batches(_md5, return_dtype=pl.String).alias("seq_hash"),
    )


def _write_artifacts(ordered: pl.DataFrame, out: Path) -> None:
    inter = ordered.lazy().select(
        "user_idx",
        "item_idx",
        "user_id",
        "item_id",
        pl.col("ts").alias("timestamp"),
        pl.lit(None, dtype=pl.Float64).alias("rating"),
        "position",
    )
    inter.sink_parquet(out / "interactions.parquet", compression="zstd", engine=STREAMING)
    items = (
        ordered.lazy()
        .group_by("item_idx")
        .agg(pl.col("item_id").first(), pl.len().cast(pl.Int32).alias("n_interactions"))
        .sort("item_idx")
        .select(
            "item_idx",
            "item_id",
            *(pl.lit(None, dtype=pl.String).alias(name) for name in TEXT_FIELDS),
            "n_interactions",
        )
    )
    items.sink_parquet(out / "items.parquet", compression="zstd", engine=STREAMING)
    sequences = _sequences(ordered, MAX_HISTORY + 1)
    sequences.sink_parquet(out / "sequences.parquet", compression="zstd", engine=STREAMING)


def run_polars(input_path: Path, out: Path) -> Path:
    """The data stage's steps in Polars: same rules, same three Parquet files (under
    `out/data/bench`, as the other implementations)."""
    frame = _k_core(_deduped(input_path), max(K_CORE_USERS, MIN_SEQUENCE_LENGTH), K_CORE_ITEMS)
    ordered = _ordered(frame)
    del frame  # the ordered frame holds everything the artifacts need
    out = out / "data" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    _write_artifacts(ordered, out)
    return out
