"""Sequence building in DuckDB SQL: from `raw_interactions` / `raw_items` to the three artifacts.

Steps, each a set operation over the whole log:
  1. drop interactions rated below `min_rating`;
  2. remove duplicates (repeated user-item pairs, or exact duplicate rows);
  3. iterative k-core until nothing changes (a user needs at least 3 interactions for
     leave-one-out, whatever `k_core_users` says);
  4. dense ids (users and items from 1, in id order; 0 is padding) and chronological positions
     with a deterministic tie-break;
  5. per user: the last `max_history + 1` items, split leave-one-out into train prefix, valid
     item and test item, and a hash of the sequence (raw ids) to detect changed users later.
"""

from __future__ import annotations

import logging
from typing import Any

import duckdb

from slim_core.config import DataConfig
from slim_core.errors import DataError

log = logging.getLogger("slim_core.data")

# Leave-one-out needs one train, one valid and one test item.
MIN_SEQUENCE_LENGTH = 3


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _dedup(con: duckdb.DuckDBPyConnection, mode: str) -> None:
    # `exact`: same user, item and time (for order-only sources every position is distinct).
    partition = (
        "user_id, item_id, coalesce(ts, src_order)" if mode == "exact" else "user_id, item_id"
    )
    direction = "DESC" if mode == "last" else "ASC"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE deduped AS
        SELECT * FROM rated
        QUALIFY row_number() OVER (
            PARTITION BY {partition} ORDER BY ts {direction} NULLS LAST, src_order {direction}) = 1
        """
    )


def _k_core(con: duckdb.DuckDBPyConnection, min_user: int, min_item: int) -> list[dict[str, int]]:
    """Filter `deduped` into `kcore`, repeating until every user and item meets its minimum."""
    con.execute("CREATE OR REPLACE TEMP TABLE kcore AS SELECT * FROM deduped")
    rounds: list[dict[str, int]] = []
    while True:
        before = con.execute(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM kcore"
        ).fetchone()
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE kcore AS
            WITH users AS (SELECT user_id FROM kcore GROUP BY user_id HAVING count(*) >= {min_user}),
                 items AS (SELECT item_id FROM kcore GROUP BY item_id HAVING count(*) >= {min_item})
            SELECT * FROM kcore SEMI JOIN users USING (user_id) SEMI JOIN items USING (item_id)
            """
        )
        after = con.execute(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM kcore"
        ).fetchone()
        if after[0] == before[0]:
            return rounds
        rounds.append(
            {
                "interactions_removed": before[0] - after[0],
                "users_removed": before[1] - after[1],
                "items_removed": before[2] - after[2],
            }
        )
        log.info(
            "k-core round %d: removed %d users, %d items, %d interactions",
            len(rounds),
            before[1] - after[1],
            before[2] - after[2],
            before[0] - after[0],
        )


def build_sequences(
    con: duckdb.DuckDBPyConnection, cfg: DataConfig, *, has_timestamps: bool, source_name: str
) -> dict[str, Any]:
    """Create the `interactions`, `items` and `sequences` tables in `con`; return statistics."""
    raw = con.execute(
        "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id) FROM raw_interactions"
    ).fetchone()
    stats: dict[str, Any] = {
        "input": {
            "interactions": raw[0],
            "users": raw[1],
            "items": raw[2],
            "item_rows": _count(con, "raw_items"),
        },
        "dropped": {},
    }

    rating_filter = "" if cfg.min_rating is None else f"WHERE rating >= {float(cfg.min_rating)}"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE rated AS SELECT * FROM raw_interactions {rating_filter}"
    )
    stats["dropped"]["below_min_rating"] = raw[0] - _count(con, "rated")

    _dedup(con, cfg.dedup)
    stats["dropped"]["duplicates"] = _count(con, "rated") - _count(con, "deduped")
    log.info(
        "removed %d duplicate interactions (dedup=%s)", stats["dropped"]["duplicates"], cfg.dedup
    )

    min_user = max(cfg.k_core_users, MIN_SEQUENCE_LENGTH)
    rounds = _k_core(con, min_user, cfg.k_core_items)
    stats["k_core"] = {
        "min_user_interactions": min_user,
        "min_item_interactions": cfg.k_core_items,
        "rounds": rounds,
    }
    stats["dropped"]["k_core_interactions"] = sum(r["interactions_removed"] for r in rounds)
    stats["dropped"]["k_core_users"] = sum(r["users_removed"] for r in rounds)
    stats["dropped"]["k_core_items"] = sum(r["items_removed"] for r in rounds)
    if _count(con, "kcore") == 0:
        raise DataError(
            f"nothing is left after filtering: the k-core (users with >= {min_user} and items with "
            f">= {cfg.k_core_items} interactions) removed all {_count(con, 'deduped')} interactions; "
            "lower data.k_core_users / data.k_core_items or bring more data",
            path=source_name,
            field="data.k_core_users / data.k_core_items",
        )

    # Chronological order; ties by item id (or source order). Order-only sources keep their order.
    tie = "item_id, " if has_timestamps and cfg.tie_break == "item_id" else ""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE user_ids AS
        SELECT user_id, CAST(row_number() OVER (ORDER BY user_id) AS INTEGER) AS user_idx
        FROM (SELECT DISTINCT user_id FROM kcore);
        CREATE OR REPLACE TEMP TABLE item_ids AS
        SELECT item_id, CAST(row_number() OVER (ORDER BY item_id) AS INTEGER) AS item_idx
        FROM (SELECT DISTINCT item_id FROM kcore);
        CREATE OR REPLACE TEMP TABLE interactions AS
        SELECT u.user_idx, i.item_idx, k.user_id, k.item_id, k.ts AS "timestamp", k.rating,
               CAST(row_number() OVER (PARTITION BY k.user_id ORDER BY k.ts NULLS LAST, {tie}k.src_order) - 1
                    AS INTEGER) AS position
        FROM kcore k JOIN user_ids u USING (user_id) JOIN item_ids i USING (item_id)
        ORDER BY u.user_idx, position;
        """
    )

    keep = cfg.max_history + 1
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sequences AS
        WITH kept AS (
            SELECT user_idx, user_id,
                   list(item_idx ORDER BY position) AS items,
                   list(item_id ORDER BY position) AS raw_items,
                   count(*) AS n_interactions
            FROM interactions
            GROUP BY user_idx, user_id
        ), cut AS (
            SELECT user_idx, user_id, n_interactions,
                   items[greatest(len(items) - {keep} + 1, 1):] AS items,
                   raw_items[greatest(len(raw_items) - {keep} + 1, 1):] AS raw_items
            FROM kept
        )
        SELECT user_idx, user_id,
               CAST(items AS INTEGER[]) AS items,
               CAST(items[1:len(items) - 2] AS INTEGER[]) AS train_items,
               CAST(items[len(items) - 1] AS INTEGER) AS valid_item,
               CAST(items[len(items)] AS INTEGER) AS test_item,
               CAST(n_interactions AS INTEGER) AS n_interactions,
               md5(array_to_string(raw_items, chr(31))) AS seq_hash
        FROM cut
        ORDER BY user_idx
        """
    )

    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE items AS
        SELECT i.item_idx, i.item_id, r.title, r.category, r.brand, r.description,
               NULLIF(concat_ws('; ', 'Title: ' || r.title, 'Category: ' || r.category,
                                'Brand: ' || r.brand), '') AS text,
               CAST(c.n AS INTEGER) AS n_interactions
        FROM item_ids i
        LEFT JOIN raw_items r USING (item_id)
        JOIN (SELECT item_idx, count(*) AS n FROM interactions GROUP BY item_idx) c USING (item_idx)
        ORDER BY i.item_idx
        """
    )

    n_users, n_items, n_inter = (_count(con, t) for t in ("sequences", "items", "interactions"))
    lengths = con.execute(
        """
        SELECT min(n_interactions), avg(n_interactions), median(n_interactions),
               quantile_cont(n_interactions, 0.9), max(n_interactions),
               min(len(items)), avg(len(items)), max(len(items))
        FROM sequences
        """
    ).fetchone()
    no_text = con.execute("SELECT count(*) FROM items WHERE text IS NULL").fetchone()[0]
    if no_text:
        log.warning(
            "%d of %d items have no text (title, category or brand); ID-only models can "
            "still use them, text variants cannot",
            no_text,
            n_items,
        )
    stats["output"] = {
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items),
        "items_without_text": no_text,
    }
    stats["sequence_length"] = {
        "min": lengths[0],
        "mean": round(lengths[1], 3),
        "median": lengths[2],
        "p90": lengths[3],
        "max": lengths[4],
    }
    stats["stored_sequence_length"] = {
        "min": lengths[5],
        "mean": round(lengths[6], 3),
        "max": lengths[7],
        "max_history": cfg.max_history,
    }
    stats["has_timestamps"] = has_timestamps
    return stats
