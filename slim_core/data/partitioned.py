"""The data stage's filtering and sequence building split by user partition, for a log larger
than one machine: each step is a map over partitions on any `concurrent.futures` executor (a Dask
cluster's `client.get_executor()`, or a process pool).

    with distributed.Client("tcp://scheduler:8786") as client:
        stats = build_sequences_partitioned(files, items, cfg, folder, client.get_executor(), 64)

A user's rows all land in one partition, so ratings, duplicates, the user side of the k-core and
the ordering into sequences never look outside it. Two reductions stay with the caller, both
small: each k-core round's item counts (an item's count spans every user: one summed table of
items a round) and the dense ids (a sort of the kept user and item ids). The output is the
single-machine stage's, row for row; `folder` must be storage every worker reads and writes.
Documented in docs/operations.md ("The data stage and evaluation on a Dask cluster").
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from slim_core.config import DataConfig
from slim_core.data.sequences import (
    MIN_SEQUENCE_LENGTH,
    _dedup,
    _item_table,
    _ordered_tables,
    _output_stats,
)
from slim_core.data.stage import _copy_parquet
from slim_core.errors import DataError

# What every input file holds: one row per interaction; `src_order` breaks ties in time.
RAW_COLUMNS = "user_id, item_id, ts, rating, src_order"
ITEM_COLUMNS = "item_id, title, category, brand, description"


@dataclass(frozen=True)
class PartCounts:
    """What the caller needs from a partition after a step: its rows, users and item counts."""

    rows: int
    users: int
    least_user: int  # fewest interactions of one of its users (0 when it has none)
    items: pa.Table  # (i, n): interactions per item in this partition


def build_sequences_partitioned(
    inputs: Sequence[Path],
    items: Path | None,
    cfg: DataConfig,
    folder: Path,
    executor: Executor,
    partitions: int,
    *,
    has_timestamps: bool = True,
) -> dict[str, Any]:
    """`interactions`, `items` and `sequences` Parquet in `folder` from raw interaction files
    (`RAW_COLUMNS`, any partitioning) and an item file (`ITEM_COLUMNS`); returns statistics."""
    work = folder / "partitions"  # the intermediate files, removed at the end
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Dask's executor takes sized lists only: shared arguments go in through `partial`.
    outs = [work / f"input-{n}" for n in range(len(inputs))]
    list(executor.map(partial(_split_by_user, partitions=partitions), list(inputs), outs))
    parts = [work / f"part-{n}.parquet" for n in range(partitions)]
    raw = [sorted(work.glob(f"input-*/part={n}/*.parquet")) for n in range(partitions)]
    parts, raw = zip(*[(p, r) for p, r in zip(parts, raw, strict=True) if r], strict=True)
    counts = list(executor.map(partial(_dedup_part, cfg=cfg), raw, parts))
    deduped = sum(c.rows for c in counts)
    min_user = max(cfg.k_core_users, MIN_SEQUENCE_LENGTH)
    item_counts, rounds = _k_core(parts, counts, min_user, cfg.k_core_items, executor)
    if not item_counts.num_rows:
        raise DataError(
            f"nothing is left after the k-core (users >= {min_user}, items >= "
            f"{cfg.k_core_items} interactions)",
            path=str(inputs[0]),
            field="data.k_core_users / data.k_core_items",
        )
    users, kept_items = work / "users.parquet", work / "items.parquet"
    _dense_ids(parts, item_counts, users, kept_items)
    each = partial(_sequences_part, users=users, items=kept_items, cfg=cfg, timed=has_timestamps)
    list(executor.map(each, parts))
    stats = _gather(parts, items, kept_items, cfg, folder)
    shutil.rmtree(work)
    stats["k_core"] = {
        "min_user_interactions": min_user,
        "min_item_interactions": cfg.k_core_items,
        "rounds": rounds,
    }
    stats["deduplicated_interactions"] = deduped
    return stats


def _k_core(
    parts: Sequence[Path],
    counts: list[PartCounts],
    min_user: int,
    min_item: int,
    executor: Executor,
) -> tuple[pa.Table, list[dict[str, int]]]:
    """Rounds over every partition until each kept user and item meets its minimum (as the
    single-machine stage's `_k_core`); the kept items' counts and what each round removed."""
    rounds: list[dict[str, int]] = []
    item_counts = _sum_items(counts)
    keep = parts[0].parent / "keep-items.parquet"
    while item_counts.num_rows:
        least_user = min(c.least_user for c in counts if c.rows)
        if least_user >= min_user and min(item_counts["n"].to_pylist()) >= min_item:
            break
        con = duckdb.connect()
        con.register("item_counts", item_counts)
        con.execute(
            f"COPY (SELECT i FROM item_counts WHERE n >= {int(min_item)}) TO ? (FORMAT parquet)",
            [str(keep)],
        )
        before = (sum(c.rows for c in counts), sum(c.users for c in counts), item_counts.num_rows)
        counts = list(
            executor.map(partial(_k_core_part, keep_items=keep, min_user=min_user), parts)
        )
        item_counts = _sum_items(counts)
        after = (sum(c.rows for c in counts), sum(c.users for c in counts), item_counts.num_rows)
        names = ("interactions_removed", "users_removed", "items_removed")
        rounds.append({name: b - a for name, b, a in zip(names, before, after, strict=True)})
    return item_counts, rounds


def _split_by_user(path: Path, out: Path, partitions: int) -> None:
    """One input file's rows into `out/part=<p>/`, p a hash of the user id."""
    con = duckdb.connect()
    columns = con.sql(f"SELECT * FROM {_parquet([path])} LIMIT 0").columns
    missing = [name for name in RAW_COLUMNS.split(", ") if name not in columns]
    if missing:
        raise DataError(f"no column {', '.join(missing)} (expected {RAW_COLUMNS})", path=path)
    con.execute(
        f"COPY (SELECT {RAW_COLUMNS}, hash(user_id) % {int(partitions)} AS part "
        f"FROM read_parquet(?)) TO ? (FORMAT parquet, PARTITION_BY (part), OVERWRITE)",
        [str(path), str(out)],
    )


def _dedup_part(raw: Sequence[Path], out: Path, cfg: DataConfig) -> PartCounts:
    """Ratings below `min_rating` and duplicates out of one partition (users are whole here)."""
    con = duckdb.connect()
    rating = "" if cfg.min_rating is None else f"WHERE rating >= {float(cfg.min_rating)}"
    con.execute(
        "CREATE TEMP TABLE events AS SELECT user_id AS u, item_id AS i, ts, rating, src_order "
        f"FROM read_parquet(?) {rating}",
        [[str(p) for p in raw]],
    )
    _dedup(con, cfg.dedup)
    return _write_counted(con, "deduped", out)


def _k_core_part(part: Path, keep_items: Path, min_user: int) -> PartCounts:
    """One k-core round in one partition: its users under `min_user` and the items the caller
    found under the item minimum (over every partition) out."""
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TEMP TABLE kcore AS SELECT * FROM read_parquet(?) AS k
        SEMI JOIN (SELECT u FROM read_parquet(?) GROUP BY u HAVING count(*) >= {int(min_user)})
            USING (u)
        SEMI JOIN read_parquet(?) USING (i)
        """,
        [str(part), str(part), str(keep_items)],
    )
    return _write_counted(con, "kcore", part)


def _write_counted(con: duckdb.DuckDBPyConnection, table: str, out: Path) -> PartCounts:
    _copy_parquet(con, table, out)
    rows, users, least = con.execute(
        f"SELECT sum(n), count(*), coalesce(min(n), 0) FROM (SELECT count(*) n FROM {table} GROUP BY u)"
    ).fetchall()[0]
    items = con.sql(f"SELECT i, count(*) AS n FROM {table} GROUP BY i").to_arrow_table()
    return PartCounts(int(rows or 0), users, least, items)


def _sum_items(counts: list[PartCounts]) -> pa.Table:
    con = duckdb.connect()
    con.register("counts", pa.concat_tables([c.items for c in counts]))
    return con.sql("SELECT i, CAST(sum(n) AS BIGINT) AS n FROM counts GROUP BY i").to_arrow_table()


def _dense_ids(parts: Sequence[Path], item_counts: pa.Table, users: Path, items: Path) -> None:
    """Dense ids from 1 in id order over what the k-core kept: the one sort of every user id."""
    con = duckdb.connect()
    con.register("item_counts", item_counts)
    con.execute(
        f"""
        CREATE TEMP TABLE kept_users AS
        SELECT u AS user_id, CAST(row_number() OVER (ORDER BY u) AS INTEGER) AS user_idx
        FROM (SELECT DISTINCT u FROM {_parquet(parts)});
        CREATE TEMP TABLE kept_items AS
        SELECT i AS item_id, n, CAST(row_number() OVER (ORDER BY i) AS INTEGER) AS item_idx
        FROM item_counts;
        """
    )
    _copy_parquet(con, "kept_users", users)
    _copy_parquet(con, "kept_items", items)


def _sequences_part(part: Path, users: Path, items: Path, cfg: DataConfig, timed: bool) -> None:
    """One partition's `interactions` and `sequences`, next to its k-core rows."""
    con = duckdb.connect()
    con.execute(
        f"""
        CREATE TEMP TABLE kcore AS SELECT * FROM {_parquet([part])};
        CREATE TEMP TABLE kept_users AS SELECT user_id AS u, user_id, user_idx
        FROM {_parquet([users])} SEMI JOIN (SELECT DISTINCT u AS user_id FROM kcore) USING (user_id);
        CREATE TEMP VIEW kept_items AS SELECT item_id AS i, item_id, item_idx
        FROM {_parquet([items])};
        """
    )
    _ordered_tables(con, cfg, timed)
    for table in ("interactions", "sequences"):
        _copy_parquet(con, table, part.with_suffix(f".{table}.parquet"))


def _gather(
    parts: Sequence[Path], items: Path | None, kept_items: Path, cfg: DataConfig, folder: Path
) -> dict[str, Any]:
    """The three artifacts in user order (one sorted write, as the single-machine stage's),
    and the stage's output statistics."""
    con = duckdb.connect()
    for table, order in (("interactions", "user_idx, position"), ("sequences", "user_idx")):
        files = _parquet([p.with_suffix(f".{table}.parquet") for p in parts])
        con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {files} ORDER BY {order}")
    if items is None:
        con.execute(
            f"CREATE TEMP TABLE raw_items ({ITEM_COLUMNS.replace(',', ' VARCHAR,')} VARCHAR)"
        )
    else:
        con.execute(f"CREATE TEMP VIEW raw_items AS SELECT {ITEM_COLUMNS} FROM {_parquet([items])}")
    con.execute(
        f"""
        CREATE TEMP VIEW kept_items AS SELECT item_id AS i, item_id, item_idx, n
        FROM {_parquet([kept_items])};
        CREATE TEMP VIEW item_counts AS SELECT i, n FROM kept_items;
        """
    )
    _item_table(con)
    for table in ("interactions", "items", "sequences"):
        _copy_parquet(con, table, folder / f"{table}.parquet")
    return _output_stats(con, cfg)


def _parquet(paths: Sequence[Path]) -> str:
    """`read_parquet([...])` over `paths` as SQL text (a view takes no prepared parameters)."""
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{quoted}])"
