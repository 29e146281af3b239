"""Negatives for the sampled protocol: drawn once with a fixed seed, saved, reused by every model.

    write_negatives(path, {"valid": (user_idx, negatives), "test": (user_idx, negatives)})

The Parquet file has one row per (user, split): `user_idx INT32, split VARCHAR,
negatives INT32[]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slim_core.errors import DataError
from storage import atomic_path


def sample_negatives(
    sequences: Sequence[Sequence[int]], n_items: int, n: int = 100, seed: int = 0
) -> np.ndarray:
    """`n` distinct items per user, uniform over 1..n_items minus everything the user touched."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(sequences), n), dtype=np.int32)
    for row, seen_items in enumerate(sequences):
        seen = set(int(i) for i in seen_items)
        free = n_items - len(seen - {0})
        if free < n:
            raise ValueError(f"user row {row}: only {free} items left to sample {n} negatives from")
        picked: list[int] = []
        chosen: set[int] = set()
        while len(picked) < n:
            # Rejection sampling in blocks: fast while the user touched few of the items.
            for item in rng.integers(1, n_items + 1, size=2 * (n - len(picked)) + 8).tolist():
                if item not in seen and item not in chosen:
                    chosen.add(item)
                    picked.append(item)
                    if len(picked) == n:
                        break
        out[row] = picked
    return out


def write_negatives(
    path: str | os.PathLike[str], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Save {split: (user_idx [m], negatives [m, n])} atomically."""
    users, names, lists = [], [], []
    for split, (user_idx, negatives) in splits.items():
        users.extend(int(u) for u in user_idx)
        names.extend([split] * len(user_idx))
        lists.extend(negatives.astype(np.int32).tolist())
    table = pa.table(
        {
            "user_idx": pa.array(users, pa.int32()),
            "split": pa.array(names, pa.string()),
            "negatives": pa.array(lists, pa.list_(pa.int32())),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_negatives(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (user_idx int32 [m], negatives int32 [m, n])}."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError("negatives file not found", path=path) from None
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"not a readable Parquet file: {error}", path=path) from None
    missing = {"user_idx", "split", "negatives"} - set(table.column_names)
    if missing:
        raise DataError(f"missing column(s) {sorted(missing)}", path=path, field="negatives")
    data = table.to_pydict()
    out = {}
    for split in sorted(set(data["split"])):
        rows = [n for n, s in enumerate(data["split"]) if s == split]
        widths = {len(data["negatives"][n]) for n in rows}
        if len(widths) != 1:
            raise DataError(
                f"rows of split {split!r} have different numbers of negatives {sorted(widths)}",
                path=path,
                field="negatives",
            )
        out[split] = (
            np.array([data["user_idx"][n] for n in rows], dtype=np.int32),
            np.array([data["negatives"][n] for n in rows], dtype=np.int32),
        )
    return out
