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


def _sample_row(rng: np.random.Generator, seen: np.ndarray, n_items: int, n: int) -> np.ndarray:
    """`n` distinct items from 1..n_items not in `seen` (sorted, unique, no 0), in random order."""
    free = n_items - len(seen)
    if free < 4 * n:  # few free items: draw from the explicit list
        return rng.choice(np.setdiff1d(np.arange(1, n_items + 1), seen), n, replace=False)
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < n:  # rejection sampling in blocks; accepts > 3/4 of draws here
        draw = rng.integers(1, n_items + 1, size=2 * (n - len(picked)))
        draw = draw[~np.isin(draw, seen)]
        picked = np.concatenate([picked, draw])
        _, first = np.unique(picked, return_index=True)  # drop repeats, keep draw order
        picked = picked[np.sort(first)]
    return picked[:n]


def sample_negatives(
    sequences: Sequence[Sequence[int]], n_items: int, n: int = 100, seed: int = 0
) -> np.ndarray:
    """int32 [users, n]: per user `n` distinct items, uniform over 1..n_items minus all the
    user's items (`sequences[u]`: every item the user touched, valid/test targets included).

    Deterministic for a seed. Raises ValueError if a user has fewer than `n` untouched items.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((len(sequences), n), dtype=np.int32)
    for row, items in enumerate(sequences):
        seen = np.unique(np.asarray(items, dtype=np.int64))
        if len(seen) and (seen[0] < 0 or seen[-1] > n_items):
            raise ValueError(f"user row {row}: item ids must be within 0..{n_items}")
        seen = seen[seen != 0]
        free = n_items - len(seen)
        if free < n:
            raise ValueError(
                f"user row {row}: only {free} of {n_items} items untouched, {n} negatives needed;"
                " lower evaluation.sampled_negatives for a catalogue this small"
            )
        out[row] = _sample_row(rng, seen, n_items, n)
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
