"""Vector Parquet files: item text vectors and per-(user, cutoff) rationale vectors.

Format: one row per key, key columns INT32 plus `vector`, a Parquet LIST of FLOAT written from
pyarrow `fixed_size_list<float32>[dim]` (pyarrow reads it back as that type, DuckDB as
`FLOAT[]`). `vector` is NULL where a key has no vector (an item without text). Readers also
accept variable-size lists and other float widths if every non-NULL vector has the same length.

- item vectors: key `item_idx` (1..I, as in items.parquet)
- user vectors: keys `user_idx`, `cutoff`; `cutoff` is the 0-based position of the target item
  in the user's chronological sequence, i.e. the number of interactions before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slim_core.errors import DataError
from storage import atomic_path

VECTOR = "vector"
ITEM_KEYS = ("item_idx",)
USER_KEYS = ("user_idx", "cutoff")
_SHOW = 5  # offending keys listed in an error message


def write_vectors(
    path: str | os.PathLike[str],
    keys: dict[str, np.ndarray],
    vectors: np.ndarray | Sequence[np.ndarray | None],
    *,
    dim: int | None = None,
) -> None:
    """Write key columns (INT32) and `vector` (float32 list, NULL for None) atomically.

    `dim` is needed only when every vector is None; otherwise it is checked if given.
    """
    n = len(vectors)
    if any(len(values) != n for values in keys.values()):
        raise ValueError(f"key columns and vectors differ in length ({n} vectors)")
    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2:
            raise ValueError(f"expected a 2-d vector matrix, got shape {vectors.shape}")
        matrix = vectors.astype(np.float32, copy=False)
        valid = np.ones(n, dtype=bool)
    else:
        valid = np.array([v is not None for v in vectors], dtype=bool).reshape(-1)
        present = [np.asarray(v, dtype=np.float32).reshape(-1) for v in vectors if v is not None]
        if len({v.shape[0] for v in present}) > 1:
            raise ValueError("vectors of different lengths")
        width = present[0].shape[0] if present else dim
        if width is None:
            raise ValueError("dim is needed when there is no vector")
        matrix = np.zeros((n, width), dtype=np.float32)
        if present:
            matrix[valid] = np.stack(present)
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {matrix.shape[1]}")
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1), type=pa.float32()), matrix.shape[1], mask=pa.array(~valid)
    )
    table = pa.table(
        {name: pa.array(np.asarray(values), type=pa.int32()) for name, values in keys.items()}
        | {VECTOR: column}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass(frozen=True)
class UserVectors:
    """Rationale vectors per (user_idx, cutoff): `keys` [m, 2] int64, `matrix` [m, dim] float32.

    Rows whose `vector` is NULL in the file are left out. `index` maps (user_idx, cutoff) to a
    row of `matrix`.
    """

    keys: np.ndarray
    matrix: np.ndarray
    index: dict[tuple[int, int], int] = field(repr=False)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def get(self, user_idx: int, cutoff: int) -> np.ndarray:
        return self.matrix[self.index[(user_idx, cutoff)]]


def read_item_vectors(
    path: str | os.PathLike[str],
    n_items: int,
    dim: int | None = None,
    *,
    require_all: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors as a [n_items + 1, dim] float32 matrix indexed by item_idx, and a bool mask.

    Row 0 (padding) and rows of items without a vector are zeros, with mask False.
    """
    keys, matrix, valid = _read(path, ITEM_KEYS, dim)
    idx = keys[:, 0]
    outside = idx[(idx < 1) | (idx > n_items)]
    if outside.size:
        raise DataError(
            f"{outside.size} item_idx value(s) outside 1..{n_items} (the items in items.parquet),"
            f" e.g. {_few(outside)}",
            path=path,
            field="item_idx",
        )
    out = np.zeros((n_items + 1, matrix.shape[1]), dtype=np.float32)
    mask = np.zeros(n_items + 1, dtype=bool)
    out[idx[valid]] = matrix[valid]
    mask[idx[valid]] = True
    if require_all:
        missing = np.flatnonzero(~mask[1:]) + 1
        if missing.size:
            raise DataError(
                f"{missing.size} of {n_items} items have no vector (no row or a NULL vector),"
                f" e.g. item_idx {_few(missing)}; text variants need text for every item",
                path=path,
                field=VECTOR,
            )
    return out, mask


def read_user_vectors(
    path: str | os.PathLike[str],
    dim: int | None = None,
    *,
    required: Iterable[tuple[int, int]] = (),
) -> UserVectors:
    """Rationale vectors per (user_idx, cutoff); every pair in `required` must have one."""
    keys, matrix, valid = _read(path, USER_KEYS, dim)
    keys, matrix = keys[valid], matrix[valid]
    index = {(int(u), int(c)): row for row, (u, c) in enumerate(keys.tolist())}
    missing = [pair for pair in required if (int(pair[0]), int(pair[1])) not in index]
    if missing:
        shown = ", ".join(f"({u}, {c})" for u, c in missing[:_SHOW])
        raise DataError(
            f"{len(missing)} required (user_idx, cutoff) pair(s) have no vector, e.g. {shown}",
            path=path,
            field=VECTOR,
        )
    return UserVectors(keys=keys, matrix=matrix, index=index)


def _few(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW].tolist())
    return shown + (", ..." if values.size > _SHOW else "")


def _key_text(names: Sequence[str], row: np.ndarray) -> str:
    return ", ".join(f"{name}={int(v)}" for name, v in zip(names, row, strict=True))


def _read(
    path: str | os.PathLike[str], key_names: Sequence[str], dim: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (keys [m, k] int64, vectors [m, dim] float32 with NULL rows zero, valid [m])."""
    path = Path(path)
    if not path.is_file():
        raise DataError("vector file not found", path=path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from exc
    for name in (*key_names, VECTOR):
        if name not in table.column_names:
            raise DataError(
                f"column missing; expected columns {', '.join((*key_names, VECTOR))},"
                f" found {', '.join(table.column_names) or 'none'}",
                path=path,
                field=name,
            )

    keys = _keys(table, key_names, path)
    matrix, valid = _vectors(table, key_names, keys, dim, path)
    unique, counts = np.unique(keys, axis=0, return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        raise DataError(
            f"{len(dup)} duplicate key(s), e.g. {_key_text(key_names, dup[0])}",
            path=path,
            field=", ".join(key_names),
        )
    return keys, matrix, valid


def _keys(table: pa.Table, key_names: Sequence[str], path: Path) -> np.ndarray:
    """The key columns as [m, k] int64, refused when not integers or with NULLs."""
    key_cols = []
    for name in key_names:
        col = table.column(name)
        if not pa.types.is_integer(col.type):
            raise DataError(f"expected an integer column, found {col.type}", path=path, field=name)
        if col.null_count:
            raise DataError(f"{col.null_count} NULL key value(s)", path=path, field=name)
        key_cols.append(col.to_numpy().astype(np.int64))
    keys = np.stack(key_cols, axis=1) if len(table) else np.zeros((0, len(key_names)), np.int64)

    return keys


def _vectors(
    table: pa.Table, key_names: Sequence[str], keys: np.ndarray, dim: int | None, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [m, dim] float32 with NULL rows zero, valid [m]): one dimension, all finite."""
    column = table.column(VECTOR).combine_chunks()
    kind = column.type
    if not (
        (
            pa.types.is_list(kind)
            or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)
        )
        and pa.types.is_floating(kind.value_type)
    ):
        raise DataError(f"expected a list of floats, found {kind}", path=path, field=VECTOR)
    valid = column.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    present = column.filter(pa.array(valid))
    lengths = pc.list_value_length(present).to_numpy(zero_copy_only=False).astype(np.int64)
    if dim is not None:
        expected = dim
    elif lengths.size:
        expected = int(lengths[0])
    else:
        expected = kind.list_size if pa.types.is_fixed_size_list(kind) else 0
    wrong = np.flatnonzero(lengths != expected)
    if wrong.size:
        first = np.flatnonzero(valid)[wrong[0]]
        source = "expected" if dim is not None else "the first vector has"
        raise DataError(
            f"wrong vector dimension: {source} {expected}, found {int(lengths[wrong[0]])}"
            f" at {_key_text(key_names, keys[first])} ({wrong.size} row(s) differ)",
            path=path,
            field=VECTOR,
        )
    values = pc.list_flatten(present).to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = np.zeros((len(table), expected), dtype=np.float32)
    matrix[valid] = values.reshape(lengths.size, expected)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise DataError(
            f"NaN or infinite values in {bad.size} vector(s), first at"
            f" {_key_text(key_names, keys[bad[0]])}",
            path=path,
            field=VECTOR,
        )

    return matrix, valid
