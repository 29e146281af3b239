"""The data stage's filtering and sequence building split by user partition, for a log whose
filtering and ordering outgrow one machine's cores: each step is a map over partitions on any
`concurrent.futures` executor (a Dask cluster's `client.get_executor()`, or a process pool).

    with distributed.Client("tcp://scheduler:8786") as client:
        stats = build_sequences_partitioned(files, items, cfg, folder, client.get_executor(), 64)

A user's rows all land in one partition, so ratings, duplicates, the user side of the k-core and
the ordering into sequences never look outside it. Two reductions stay with the caller, both
small: each k-core round's item counts (an item's count spans every user: one summed table of
items a round) and the dense ids (a sort of the kept user and item ids); the caller also writes
the three tables in user order (one sorted pass, spilling under `data.duckdb_memory_limit`).
The tables are the single-machine stage's, row for row. Every path is on a file system every
worker reads and writes. Documented in docs/operations.md ("The data stage and evaluation on a
Dask cluster").
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
import pyarrow.compute as pc

from slim_core.config import DataConfig
from slim_core.data.sequences import (  # the single-machine stage's steps, run per partition
    MIN_SEQUENCE_LENGTH,
    _dedup,
    _item_table,
    _ordered_tables,
    _output_stats,
)
from slim_core.data.stage import _connect, _copy_parquet
from slim_core.errors import ConfigError, DataError

# What every input file holds, one row per interaction: ids (text, or cast to it), the time
# (NULL everywhere for an order-only source), the rating (or NULL) and `src_order`, the row's
# place in the source, unique per user: it breaks ties in time, and orders an order-only source.
RAW_COLUMNS = "user_id, item_id, ts, rating, src_order"  # as `raw_interactions` (ingest.py)
ITEM_COLUMNS = "item_id, title, category, brand, description"


@dataclass(frozen=True)
class PartCounts:
    """What the caller needs from a partition after a step: its rows, users and item counts;
    `least_user` (the fewest interactions of one of its users) tells whether the k-core is done."""

    rows: int
    users: int
    least_user: int
    items: pa.Table  # (i, n): interactions per item in this partition


def build_sequences_partitioned(
    inputs: Sequence[Path],
    items: Path | None,
    cfg: DataConfig,
    folder: Path,
    executor: Executor,
    partitions: int,
) -> dict[str, Any]:
    """`interactions`, `items` and `sequences` Parquet in `folder` from raw interaction files
    (`RAW_COLUMNS`, any partitioning) and an item file (`ITEM_COLUMNS`); returns statistics."""
    if cfg.sample_users is not None:
        raise ConfigError("data.sample_users: the partitioned data stage reads every user")
    # Intermediate files: left behind by a failure for a look, cleared by the next run.
    work = folder / "partitions"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Dask's executor takes sized lists only: shared arguments go in through `partial`. Every
    # task's arguments differ from every other's: Dask reuses a result for equal ones.
    outs = [work / f"input-{n}" for n in range(len(inputs))]
    split = list(
        executor.map(partial(_split_by_user, cfg=cfg, partitions=partitions), inputs, outs)
    )
    raw = [sorted(work.glob(f"input-*/part={n}/*.parquet")) for n in range(partitions)]
    raw = [files for files in raw if files]
    if not raw:
        raise DataError("no interactions to read (the files have no rows)", path=inputs[0])
    parts = [work / f"part-{n}-round-0.parquet" for n in range(len(raw))]
    counts = list(executor.map(partial(_dedup_part, cfg=cfg), raw, parts))
    min_user = max(cfg.k_core_users, MIN_SEQUENCE_LENGTH)
    parts, item_counts, rounds = _k_core(parts, counts, min_user, cfg, executor)
    if not item_counts.num_rows:
        raise DataError(
            f"nothing is left after the rating filter and the k-core (users >= {min_user}, "
            f"items >= {cfg.k_core_items} interactions)",
            path=str(inputs[0]),
            field="data.min_rating / data.k_core_users / data.k_core_items",
        )
    users, kept_items = work / "users.parquet", work / "items.parquet"
    _dense_ids(parts, item_counts, users, kept_items, cfg)
    timed = any(has_time for _, has_time in split)
    each = partial(_sequences_part, users=users, items=kept_items, cfg=cfg, timed=timed)
    list(executor.map(each, parts))
    stats = {
        "input": {"interactions": sum(rows for rows, _ in split)},
        "deduplicated_interactions": sum(c.rows for c in counts),
        "k_core": {
            "min_user_interactions": min_user,
            "min_item_interactions": cfg.k_core_items,
            "rounds": rounds,
        },
        "has_timestamps": timed,
    } | _gather(parts, items, kept_items, cfg, folder)
    shutil.rmtree(work)
    return stats


def _k_core(
    parts: list[Path],
    counts: list[PartCounts],
    min_user: int,
    cfg: DataConfig,
    executor: Executor,
) -> tuple[list[Path], pa.Table, list[dict[str, int]]]:
    """Rounds over every partition until each kept user and item meets its minimum (as the
    single-machine stage's `_k_core`): the last round's files, the kept items' counts and what
    each round removed. Round r writes new files, so a retried task reads what it read first."""
    rounds: list[dict[str, int]] = []
    item_counts = _sum_items(counts, cfg)
    while item_counts.num_rows:
        least_user = min(c.least_user for c in counts if c.rows)
        if least_user >= min_user and pc.min(item_counts["n"]).as_py() >= cfg.k_core_items:
            break
        keep = parts[0].parent / f"keep-items-{len(rounds) + 1}.parquet"
        con = _connect(cfg)
        con.register("item_counts", item_counts)
        con.execute(
            f"COPY (SELECT i FROM item_counts WHERE n >= {int(cfg.k_core_items)}) TO ? "
            "(FORMAT parquet)",
            [str(keep)],
        )
        nexts = [p.with_name(p.name.replace(f"-round-{len(rounds)}.", f"-round-{len(rounds) + 1}."))
                 for p in parts]  # fmt: skip
        before = (sum(c.rows for c in counts), sum(c.users for c in counts), item_counts.num_rows)
        one_round = partial(_k_core_part, keep_items=keep, min_user=min_user, cfg=cfg)
        counts = list(executor.map(one_round, parts, nexts))
        parts, item_counts = nexts, _sum_items(counts, cfg)
        after = (sum(c.rows for c in counts), sum(c.users for c in counts), item_counts.num_rows)
        names = ("interactions_removed", "users_removed", "items_removed")
        rounds.append({name: b - a for name, b, a in zip(names, before, after, strict=True)})
    return parts, item_counts, rounds


def _split_by_user(path: Path, out: Path, cfg: DataConfig, partitions: int) -> tuple[int, bool]:
    """One input file's rows into `out/part=<p>/`, p a hash of the user id (as text, trimmed, as
    ingestion reads ids); its row count and whether it has a time."""
    con = _connect(cfg)
    source = f"read_parquet('{_quoted(path)}', file_row_number = true)"
    columns = con.sql(f"SELECT * FROM {source} LIMIT 0").columns
    missing = [name for name in RAW_COLUMNS.split(", ") if name not in columns]
    if missing:
        raise DataError(f"no column {', '.join(missing)} (expected {RAW_COLUMNS})", path=path)
    con.execute(
        f"""
        CREATE TEMP VIEW raw AS SELECT trim(CAST(user_id AS VARCHAR)) AS user_id,
            trim(CAST(item_id AS VARCHAR)) AS item_id, CAST(ts AS DOUBLE) AS ts,
            CAST(rating AS DOUBLE) AS rating, src_order, file_row_number FROM {source}
        """
    )
    for column in ("user_id", "item_id"):
        empty = con.execute(
            f"SELECT file_row_number FROM raw WHERE coalesce({column}, '') = '' LIMIT 1"
        ).fetchall()
        if empty:
            raise DataError(f"row {empty[0][0] + 1}: empty {column}", path=path, field=column)
    con.execute(
        f"COPY (SELECT {RAW_COLUMNS}, hash(user_id) % {int(partitions)} AS part FROM raw) "
        "TO ? (FORMAT parquet, PARTITION_BY (part), OVERWRITE)",
        [str(out)],
    )
    rows, timed = con.execute("SELECT count(*), bool_or(ts IS NOT NULL) FROM raw").fetchall()[0]
    return rows, bool(timed)


def _dedup_part(raw: Sequence[Path], out: Path, cfg: DataConfig) -> PartCounts:
    """Ratings below `min_rating` and duplicates out of one partition (users are whole here)."""
    con = _connect(cfg)
    rating = "" if cfg.min_rating is None else f"WHERE rating >= {float(cfg.min_rating)}"
    con.execute(
        "CREATE TEMP TABLE events AS SELECT user_id AS u, item_id AS i, ts, rating, src_order "
        f"FROM {_parquet(raw)} {rating}"
    )
    _dedup(con, cfg.dedup)
    return _write_counted(con, "deduped", out)


def _k_core_part(
    part: Path, out: Path, keep_items: Path, min_user: int, cfg: DataConfig
) -> PartCounts:
    """One k-core round in one partition: its users under `min_user` and the items the caller
    found under the item minimum (over every partition) out."""
    con = _connect(cfg)
    con.execute(
        f"""
        CREATE TEMP TABLE kcore AS SELECT * FROM {_parquet([part])} AS rows
        SEMI JOIN (SELECT u FROM {_parquet([part])} GROUP BY u HAVING count(*) >= {int(min_user)})
            USING (u)
        SEMI JOIN {_parquet([keep_items])} USING (i)
        """
    )
    return _write_counted(con, "kcore", out)


def _write_counted(con: duckdb.DuckDBPyConnection, table: str, out: Path) -> PartCounts:
    _copy_parquet(con, table, out)
    rows, users, least = con.execute(
        f"SELECT sum(n), count(*), coalesce(min(n), 0) FROM (SELECT count(*) n FROM {table} GROUP BY u)"
    ).fetchall()[0]
    items = con.sql(f"SELECT i, count(*) AS n FROM {table} GROUP BY i").to_arrow_table()
    return PartCounts(int(rows or 0), users, least, items)


def _sum_items(counts: list[PartCounts], cfg: DataConfig) -> pa.Table:
    con = _connect(cfg)
    con.register("counts", pa.concat_tables([c.items for c in counts]))
    return con.sql("SELECT i, CAST(sum(n) AS BIGINT) AS n FROM counts GROUP BY i").to_arrow_table()


def _dense_ids(
    parts: Sequence[Path], item_counts: pa.Table, users: Path, items: Path, cfg: DataConfig
) -> None:
    """Dense ids from 1 in id order over what the k-core kept: the one sort of every user id."""
    con = _connect(cfg)
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
    con = _connect(cfg)
    con.execute(
        f"""
        CREATE TEMP TABLE kcore AS SELECT * FROM {_parquet([part])};
        CREATE TEMP TABLE kept_users AS SELECT user_id AS u, user_id, user_idx
        FROM {_parquet([users])} AS ids SEMI JOIN (SELECT DISTINCT u AS user_id FROM kcore) USING (user_id);
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
    con = _connect(cfg)
    for table, order in (("interactions", "user_idx, position"), ("sequences", "user_idx")):
        files = _parquet([p.with_suffix(f".{table}.parquet") for p in parts])
        con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {files} ORDER BY {order}")
    if items is None:
        con.execute(
            f"CREATE TEMP TABLE raw_items ({ITEM_COLUMNS.replace(',', ' VARCHAR,')} VARCHAR)"
        )
    else:  # one row per item, the first, with its id read as ingestion reads it
        columns = con.sql(f"SELECT * FROM {_parquet([items])} LIMIT 0").columns
        if missing := [c for c in ITEM_COLUMNS.split(", ") if c not in columns]:
            raise DataError(f"no column {', '.join(missing)} (expected {ITEM_COLUMNS})", path=items)
        con.execute(
            f"""
            CREATE TEMP TABLE raw_items AS
            SELECT trim(CAST(item_id AS VARCHAR)) AS item_id, title, category, brand, description
            FROM read_parquet('{_quoted(items)}', file_row_number = true)
            QUALIFY row_number() OVER (
                PARTITION BY trim(CAST(item_id AS VARCHAR)) ORDER BY file_row_number) = 1
            """
        )
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


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _parquet(paths: Sequence[Path]) -> str:
    """`read_parquet([...])` over `paths` as SQL text (a view takes no prepared parameters)."""
    return "read_parquet([" + ", ".join(f"'{_quoted(p)}'" for p in paths) + "])"
