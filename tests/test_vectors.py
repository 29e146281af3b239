"""Vector Parquet files: round trips and an error naming file and problem for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.errors import DataError
from slim_core.vectors import read_item_vectors, read_user_vectors, write_vectors


def items_file(path: Path, idx: list[int], vectors: list[list[float] | None]) -> Path:
    write_vectors(
        path, {"item_idx": np.array(idx)}, [None if v is None else np.array(v) for v in vectors]
    )
    return path


def raises(path: Path, *parts: str, call) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert str(path) in message
    for part in parts:
        assert part in message, message
    return info.value


def test_item_round_trip_with_null_and_padding(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [3, 1, 2], [[0, 1], [2, 3], None])
    assert pq.read_schema(path).field("vector").type == pa.list_(pa.float32(), 2)
    matrix, mask = read_item_vectors(path, 3, 2, require_all=False)
    assert matrix.dtype == np.float32 and matrix.shape == (4, 2)
    np.testing.assert_array_equal(matrix, [[0, 0], [2, 3], [0, 0], [0, 1]])
    assert mask.tolist() == [False, True, False, True]


def test_item_vectors_from_matrix_and_variable_lists(tmp_path: Path):
    path = tmp_path / "m.parquet"
    write_vectors(path, {"item_idx": np.array([1, 2])}, np.eye(2, 3))
    matrix, mask = read_item_vectors(path, 2)
    assert matrix.shape == (3, 3) and mask[1:].all()
    plain = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({"item_idx": [1, 2], "vector": pa.array([[1.0, 2.0], [3.0, 4.0]])}), plain
    )
    np.testing.assert_array_equal(read_item_vectors(plain, 2)[0][2], [3, 4])


def test_user_round_trip_and_required(tmp_path: Path):
    path = tmp_path / "u.parquet"
    keys = {"user_idx": np.array([1, 1, 2]), "cutoff": np.array([3, 4, 3])}
    write_vectors(path, keys, [np.ones(4), None, np.zeros(4)])
    users = read_user_vectors(path, 4, required=[(1, 3), (2, 3)])
    assert len(users) == 2 and users.dim == 4 and (1, 4) not in users
    np.testing.assert_array_equal(users.get(1, 3), np.ones(4))
    raises(
        path,
        "2 required (user_idx, cutoff) pair(s) have no vector",
        "(1, 4)",
        "(5, 0)",
        call=lambda: read_user_vectors(path, required=[(1, 3), (1, 4), (5, 0)]),
    )


def test_missing_file(tmp_path: Path):
    path = tmp_path / "none.parquet"
    raises(path, "not found", call=lambda: read_item_vectors(path, 3))
    raises(path, "not found", call=lambda: read_user_vectors(path))


def test_not_parquet(write):
    path = write("v.parquet", "item_idx,vector\n")
    raises(path, "not a readable Parquet file", call=lambda: read_item_vectors(path, 1))


@pytest.mark.parametrize("missing", ["item_idx", "vector"])
def test_missing_column(tmp_path: Path, missing: str):
    path = tmp_path / "v.parquet"
    columns = {"item_idx": pa.array([1], pa.int32()), "vector": pa.array([[1.0]])}
    del columns[missing]
    pq.write_table(pa.table(columns), path)
    error = raises(
        path, "column missing", f"field {missing!r}", call=lambda: read_item_vectors(path, 1)
    )
    assert error.field == missing


def test_user_file_missing_cutoff(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [1], [[1.0]])
    raises(path, "field 'user_idx'", "column missing", call=lambda: read_user_vectors(path))


def test_wrong_types(tmp_path: Path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"item_idx": ["a"], "vector": pa.array([[1.0]])}), path)
    raises(
        path,
        "field 'item_idx'",
        "expected an integer column",
        call=lambda: read_item_vectors(path, 1),
    )
    pq.write_table(pa.table({"item_idx": [1], "vector": ["x"]}), path)
    raises(
        path, "field 'vector'", "expected a list of floats", call=lambda: read_item_vectors(path, 1)
    )
    pq.write_table(
        pa.table({"item_idx": pa.array([1, None]), "vector": pa.array([[1.0], [2.0]])}), path
    )
    raises(path, "field 'item_idx'", "1 NULL key", call=lambda: read_item_vectors(path, 2))


def test_wrong_dimension(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [1, 2], [[1, 2, 3], [4, 5, 6]])
    raises(
        path,
        "field 'vector'",
        "wrong vector dimension: expected 4, found 3 at item_idx=1",
        call=lambda: read_item_vectors(path, 2, 4),
    )
    users = tmp_path / "u.parquet"
    write_vectors(users, {"user_idx": np.array([7]), "cutoff": np.array([2])}, np.ones((1, 3)))
    raises(
        users,
        "expected 8, found 3 at user_idx=7, cutoff=2",
        call=lambda: read_user_vectors(users, 8),
    )


def test_inconsistent_dimension(tmp_path: Path):
    path = tmp_path / "v.parquet"
    vectors = pa.array([[1.0, 2.0], None, [3.0]])
    pq.write_table(pa.table({"item_idx": pa.array([1, 2, 3], pa.int32()), "vector": vectors}), path)
    raises(
        path,
        "the first vector has 2, found 1 at item_idx=3",
        call=lambda: read_item_vectors(path, 3, require_all=False),
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(tmp_path: Path, bad: float):
    path = items_file(tmp_path / "v.parquet", [1, 2, 3], [[1, 2], [3, bad], [bad, 0]])
    raises(
        path,
        "field 'vector'",
        "NaN or infinite values in 2 vector(s), first at item_idx=2",
        call=lambda: read_item_vectors(path, 3),
    )


def test_null_inside_vector_counts_as_nan(tmp_path: Path):
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"item_idx": [1], "vector": pa.array([[1.0, None]])}), path)
    raises(path, "NaN or infinite", call=lambda: read_item_vectors(path, 1))


def test_duplicate_keys(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [1, 2, 2], [[1.0], [2.0], [3.0]])
    raises(
        path,
        "field 'item_idx'",
        "1 duplicate key(s), e.g. item_idx=2",
        call=lambda: read_item_vectors(path, 2),
    )
    users = tmp_path / "u.parquet"
    keys = {"user_idx": np.array([1, 1, 1]), "cutoff": np.array([5, 6, 5])}
    write_vectors(users, keys, np.zeros((3, 2)))
    raises(
        users,
        "field 'user_idx, cutoff'",
        "duplicate key(s), e.g. user_idx=1, cutoff=5",
        call=lambda: read_user_vectors(users),
    )


def test_keys_outside_range(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [0, 1, 2, 9], [[1.0], [2.0], [3.0], [4.0]])
    raises(
        path,
        "field 'item_idx'",
        "2 item_idx value(s) outside 1..2",
        "e.g. 0, 9",
        call=lambda: read_item_vectors(path, 2),
    )


def test_require_all(tmp_path: Path):
    path = items_file(tmp_path / "v.parquet", [1, 2], [[1.0], None])
    raises(
        path,
        "field 'vector'",
        "2 of 3 items have no vector",
        "item_idx 2, 3",
        "text variants need text for every item",
        call=lambda: read_item_vectors(path, 3),
    )
    _, mask = read_item_vectors(path, 3, require_all=False)
    assert mask.tolist() == [False, True, False, False]
