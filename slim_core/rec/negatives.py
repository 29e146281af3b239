"""Negatives for the sampled protocol: drawn once with a fixed seed, saved, reused by every model.

    write_negatives(path, {"valid": (user_idx, negatives), "test": (user_idx, negatives)})
    read_negatives(path) -> {"valid": (user_idx, negatives), "test": (user_idx, negatives)}

The Parquet file has one row per (user, split): `user_idx INT32, split VARCHAR ('valid' or
'test'), negatives INT32[]` (every row of a split holds the same number of negatives).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slim_core.errors import DataError
from storage import atomic_path

SPLITS = ("valid", "test")
SCHEMA = pa.schema(
    [("user_idx", pa.int32()), ("split", pa.string()), ("negatives", pa.list_(pa.int32()))]
)


BLOCK_USERS = 16_384  # users drawn together: ~100 MB of candidates at n = 100


def _explicit_row(rng: np.random.Generator, seen: np.ndarray, n_items: int, n: int) -> np.ndarray:
    """`n` distinct items of 1..n_items not in `seen`, from the explicit list of free items."""
    return rng.choice(np.setdiff1d(np.arange(1, n_items + 1), seen), n, replace=False)


def _sample_block(
    rng: np.random.Generator, rows: Sequence[Sequence[int]], n_items: int, n: int, first: int
) -> np.ndarray:
    """Negatives [len(rows), n] for one block of users, drawn for all of them at once.

    Candidates are drawn uniformly, 1.5n per row a round; those the user touched or already drew
    are rejected with one sorted search of (row, item) keys; each row keeps its first n fresh
    ones in draw order. Why not a loop per user: 3M users took minutes in Python
    (benchmarks/scale.py). A row with fewer than 4n free items would need many rounds: it draws
    from its explicit list of free items instead.
    """
    lengths = np.fromiter((len(items) for items in rows), dtype=np.int64, count=len(rows))
    empty = [np.empty(0, dtype=np.int64)]
    flat = np.concatenate([np.asarray(items, dtype=np.int64) for items in rows] or empty)
    owner = np.repeat(np.arange(len(rows)), lengths)
    bad = (flat < 0) | (flat > n_items)
    if bad.any():
        raise ValueError(f"user row {first + owner[bad][0]}: item ids must be within 0..{n_items}")
    stride = n_items + 1
    seen = _sorted_unique(owner[flat != 0] * stride + flat[flat != 0])
    free = n_items - np.bincount(seen // stride, minlength=len(rows))
    if (free < n).any():
        row = int(np.flatnonzero(free < n)[0])
        raise ValueError(
            f"user row {first + row}: only {free[row]} of {n_items} items untouched, {n} "
            "negatives needed; lower evaluation.sampled_negatives for a catalogue this small"
        )
    out = np.zeros((len(rows), n), dtype=np.int32)
    count = np.zeros(len(rows), dtype=np.int64)
    for row in np.flatnonzero(free < 4 * n):
        out[row] = _explicit_row(rng, seen[seen // stride == row] % stride, n_items, n)
        count[row] = n
    width = n + n // 2  # most rows finish in one round: few touched items, few repeats
    while (pending := np.flatnonzero(count < n)).size:
        draw = rng.integers(1, n_items + 1, size=(len(pending), width))
        keys = (pending[:, None] * stride + draw).ravel()
        fresh = np.flatnonzero(~_contains(seen, keys))
        _, first_seen = np.unique(keys[fresh], return_index=True)  # a repeat counts once
        fresh = np.sort(fresh[first_seen])  # back in draw order, row by row
        at = pending[fresh // width]
        rank = np.arange(len(fresh)) - np.searchsorted(at, at)  # position within its row
        take = count[at] + rank < n
        out[at[take], (count[at] + rank)[take]] = draw.ravel()[fresh[take]]
        np.add.at(count, at[take], 1)
        seen = np.sort(np.concatenate([seen, keys[fresh[take]]]))  # new keys: none seen before
    return out


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's hashing `unique` took 4x longer on these int64 keys."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(len(keys), dtype=bool)


def sample_negatives(
    sequences: Sequence[Sequence[int]], n_items: int, n: int = 100, seed: int = 0
) -> np.ndarray:
    """int32 [users, n]: per user `n` distinct items, uniform over 1..n_items minus all the
    user's items (`sequences[u]`: every item the user touched, valid/test targets included).

    Deterministic for a seed. Raises ValueError if a user has fewer than `n` untouched items.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(sequences), n), dtype=np.int32)
    for start in range(0, len(sequences), BLOCK_USERS):
        rows = sequences[start : start + BLOCK_USERS]
        out[start : start + len(rows)] = _sample_block(rng, rows, n_items, n, start)
    return out


def write_negatives(
    path: str | os.PathLike[str], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Save {split: (user_idx [m], negatives [m, n])} atomically; splits are 'valid'/'test'."""
    tables = []
    for split, (user_idx, negatives) in splits.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        users = np.asarray(user_idx, dtype=np.int32)
        negs = np.asarray(negatives, dtype=np.int32)
        if users.ndim != 1 or negs.ndim != 2 or len(users) != len(negs):
            raise ValueError(f"split {split!r}: need user_idx [m] and negatives [m, n]")
        flat = pa.array(negs.reshape(-1), pa.int32())
        offsets = pa.array(np.arange(len(negs) + 1, dtype=np.int32) * negs.shape[1], pa.int32())
        columns = [pa.array(users), pa.array([split] * len(users), pa.string())]
        columns.append(pa.ListArray.from_arrays(offsets, flat))
        tables.append(pa.Table.from_arrays(columns, schema=SCHEMA))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_negatives(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (user_idx int32 [m], negatives int32 [m, n])}; DataError on a missing/bad file."""
    if not Path(path).is_file():
        raise DataError("negatives file not found", path=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"not a readable Parquet file: {error}", path=path) from None
    for name, kind in zip(SCHEMA.names, SCHEMA.types, strict=True):
        if name not in table.column_names:
            raise DataError("column missing", path=path, field=name)
        column = table.column(name)
        try:
            column = column.cast(kind)
        except (pa.ArrowException, ValueError):
            raise DataError(
                f"expected {kind}, found {column.type}", path=path, field=name
            ) from None
        if column.null_count or (name == "negatives" and pc.list_flatten(column).null_count):
            raise DataError("null values", path=path, field=name)
        table = table.set_column(table.column_names.index(name), name, column)
    unknown = set(table.column("split").to_pylist()) - set(SPLITS)
    if unknown:
        raise DataError(f"unknown split(s) {sorted(unknown)}", path=path, field="split")
    out = {}
    for split in SPLITS:
        part = table.filter(pc.equal(table.column("split"), split))
        if part.num_rows == 0:
            continue
        lists = part.column("negatives").combine_chunks()
        widths = np.unique(pc.list_value_length(lists).to_numpy())
        if len(widths) != 1:
            raise DataError(
                f"split {split!r} rows hold different numbers of negatives {widths.tolist()}",
                path=path,
                field="negatives",
            )
        users = part.column("user_idx").to_numpy().astype(np.int32)
        if len(np.unique(users)) != len(users):
            raise DataError(f"split {split!r} lists a user twice", path=path, field="user_idx")
        negs = pc.list_flatten(lists).to_numpy().astype(np.int32)
        out[split] = (users, negs.reshape(part.num_rows, int(widths[0])))
    return out
