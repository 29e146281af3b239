"""Sampled-protocol negatives: deterministic, never an interacted item, and a Parquet round trip."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.errors import DataError
from slim_core.rec.negatives import read_negatives, sample_negatives, write_negatives

N_ITEMS = 500
SEQUENCES = [[1, 2, 3, 4], list(range(1, 300)), [7, 7, 0, 250], list(range(100, 400, 2))]


def test_deterministic_per_seed():
    a = sample_negatives(SEQUENCES, N_ITEMS, n=100, seed=3)
    assert np.array_equal(a, sample_negatives(SEQUENCES, N_ITEMS, n=100, seed=3))
    assert not np.array_equal(a, sample_negatives(SEQUENCES, N_ITEMS, n=100, seed=4))
    assert a.shape == (4, 100) and a.dtype == np.int32


def test_negatives_are_free_distinct_items():
    negatives = sample_negatives(SEQUENCES, N_ITEMS, n=100, seed=0)
    for items, row in zip(SEQUENCES, negatives, strict=True):
        assert len(set(row.tolist())) == 100
        assert row.min() >= 1 and row.max() <= N_ITEMS  # never padding 0
        assert not set(row.tolist()) & set(items)


def test_many_users_across_blocks_draw_uniform_free_items(monkeypatch):
    """Users drawn a block at a time, vectorised: still free, distinct and uniform."""
    import slim_core.rec.negatives as negatives_module

    monkeypatch.setattr(negatives_module, "BLOCK_USERS", 64)  # several blocks, a ragged last
    rng = np.random.default_rng(0)
    n_items, n = 400, 20
    sequences = [
        rng.choice(np.arange(1, n_items + 1), rng.integers(3, 60), replace=False)
        for _ in range(1000)
    ]
    sequences[5] = np.arange(1, n_items - 30)  # 31 free items < 4n: drawn from the explicit list
    drawn = sample_negatives(sequences, n_items, n=n, seed=1)
    for items, row in zip(sequences, drawn, strict=True):
        assert len(np.unique(row)) == n and not np.isin(row, items).any()
        assert row.min() >= 1 and row.max() <= n_items
    # uniform: item i is expected sum(n / free_u) times over the users u who never touched it
    touched = np.zeros((len(sequences), n_items + 1), dtype=bool)
    for row, items in enumerate(sequences):
        touched[row, items] = True
    share = n / (n_items - touched[:, 1:].sum(1))
    expected = (~touched[:, 1:] * share[:, None]).sum(0)
    counts = np.bincount(drawn.ravel(), minlength=n_items + 1)[1:]
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected.max())


def test_exact_fit_takes_every_free_item():
    # 10 items, user touched 1..6: exactly the 4 free items 7..10 remain
    row = sample_negatives([[1, 2, 3, 4, 5, 6]], 10, n=4, seed=0)[0]
    assert sorted(row.tolist()) == [7, 8, 9, 10]


def test_too_few_free_items_raise():
    with pytest.raises(ValueError, match=r"user row 1: only 3 of 10"):
        sample_negatives([[1], [1, 2, 3, 4, 5, 6, 7]], 10, n=4)


def test_parquet_round_trip(tmp_path):
    path = tmp_path / "negatives.parquet"
    users = np.array([0, 5, 9])
    valid = sample_negatives(SEQUENCES[:3], N_ITEMS, seed=0)
    test = sample_negatives(SEQUENCES[:3], N_ITEMS, seed=1)
    write_negatives(path, {"valid": (users, valid), "test": (users, test)})
    got = read_negatives(path)
    assert set(got) == {"valid", "test"}
    for split, negs in (("valid", valid), ("test", test)):
        assert got[split][0].dtype == np.int32 and got[split][1].dtype == np.int32
        assert got[split][0].tolist() == [0, 5, 9]
        assert np.array_equal(got[split][1], negs)
    schema = pq.read_schema(path)
    assert schema.field("user_idx").type == pa.int32()
    assert schema.field("negatives").type == pa.list_(pa.int32())
    assert [p.name for p in tmp_path.iterdir()] == ["negatives.parquet"]  # no temp file left


def test_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(DataError, match="nope.parquet.*not found"):
        read_negatives(missing)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(DataError, match="garbage.parquet.*Parquet"):
        read_negatives(garbage)
    no_column = tmp_path / "no_column.parquet"
    pq.write_table(pa.table({"user_idx": [1], "split": ["test"]}), no_column)
    with pytest.raises(DataError, match="negatives"):
        read_negatives(no_column)
    ragged = tmp_path / "ragged.parquet"
    table = {"user_idx": [1, 2], "split": ["test", "test"], "negatives": [[3, 4], [5]]}
    pq.write_table(pa.table(table), ragged)
    with pytest.raises(DataError, match="different numbers"):
        read_negatives(ragged)
    bad_split = tmp_path / "bad_split.parquet"
    pq.write_table(pa.table({"user_idx": [1], "split": ["train"], "negatives": [[3]]}), bad_split)
    with pytest.raises(DataError, match="train"):
        read_negatives(bad_split)
