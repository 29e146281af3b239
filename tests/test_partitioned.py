"""The data stage and evaluation split by user partition on a local Dask cluster (two worker
processes) give the single-machine outputs: the same rows and the same ranks."""

from functools import partial
from pathlib import Path

import duckdb
import pytest
import torch

from slim_core.config import EvalConfig, RecommenderConfig
from slim_core.data.ingest import ingest
from slim_core.data.partitioned import ITEM_COLUMNS, RAW_COLUMNS, build_sequences_partitioned
from slim_core.errors import ConfigError, DataError
from slim_core.rec.partitioned import TrainedRun, evaluate_partitioned, rank_users
from slim_core.rec.stage import run_recommenders
from tests.helpers import REPO, make_config, ml100k_source, run_stage


@pytest.fixture(scope="module")
def dask_executor():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client.get_executor()


def raw_files(config, folder: Path, pieces: int = 3) -> tuple[list[Path], Path, bool]:
    """The source as a user would bring it to a cluster: raw interactions in Parquet files cut
    by row order, not by user (the stage shuffles them), and the item table."""
    con = duckdb.connect()
    has_timestamps = ingest(con, config.data.source).has_timestamps
    con.execute(
        f"COPY (SELECT {RAW_COLUMNS}, (row_number() OVER ()) % {pieces} AS piece "
        "FROM raw_interactions) TO ? (FORMAT parquet, PARTITION_BY (piece))",
        [str(folder / "raw")],
    )
    con.execute(
        f"COPY (SELECT {ITEM_COLUMNS} FROM raw_items) TO ?", [str(folder / "items.parquet")]
    )
    return sorted((folder / "raw").glob("*/*.parquet")), folder / "items.parquet", has_timestamps


def table(path: Path, order: str) -> list[tuple]:
    return duckdb.sql(f"SELECT * FROM read_parquet('{path}') ORDER BY {order}").fetchall()


ORDER = {"interactions": "user_idx, position", "items": "item_idx", "sequences": "user_idx"}
DEMO = {
    "format": "recbole_sequence",
    "sequences": [str(REPO / "data/demo/Scientific-demo.test.inter")],
    "item_text": str(REPO / "data/demo/Scientific-demo.text"),
    "item_index": str(REPO / "data/demo/Scientific-demo.item2index"),
    "user_index": str(REPO / "data/demo/Scientific-demo.user2index"),
}


@pytest.mark.parametrize(
    ("source", "settings"),
    [
        # timestamps with ties, ratings filtered, a k-core of several rounds
        ("ml-100k", {"min_rating": 3, "k_core_users": 20, "k_core_items": 30, "max_history": 20}),
        # order from the source only, repeated purchases
        ("demo", {"dedup": "first", "k_core_users": 5, "k_core_items": 3}),
    ],
)
def test_the_partitioned_data_stage_writes_the_single_machine_tables(
    source, settings, shared_data, dask_executor, tmp_path
):
    source = ml100k_source(shared_data) if source == "ml-100k" else DEMO
    config = make_config(tmp_path / "single", source, **settings)
    single = run_stage(tmp_path / "single", source, **settings)
    files, items, has_timestamps = raw_files(config, tmp_path)
    out = tmp_path / "partitioned"
    out.mkdir()

    stats = build_sequences_partitioned(files, items, config.data, out, dask_executor, 4)

    for artifact, order in ORDER.items():
        expected = table(single.path(artifact), order)
        assert table(out / f"{artifact}.parquet", order) == expected and expected
    assert sorted(p.name for p in out.iterdir()) == [f"{a}.parquet" for a in sorted(ORDER)]
    assert stats["output"] == single.stats["output"]
    assert stats["k_core"] == single.stats["k_core"]
    assert len(stats["k_core"]["rounds"]) == (3 if source == DEMO else 5)
    assert stats["has_timestamps"] == has_timestamps == (source != DEMO)
    assert stats["input"]["interactions"] == single.stats["input"]["interactions"]


ROWS = "(VALUES ('u1', 'i1', 1.0, 1), (' ', 'i2', 2.0, 2)) t(user_id, item_id, ts, src_order)"


@pytest.mark.parametrize(
    ("select", "error"),
    [
        (
            "SELECT 'u1' AS user_id, 'i1' AS item_id, 1 AS src_order",
            r"log\.parquet.*no column ts, r",
        ),
        (f"SELECT *, NULL::DOUBLE AS rating FROM {ROWS}", r"log\.parquet.*'user_id'.*row 2: empty"),
    ],
)
def test_bad_input_files_name_the_file_field_and_row(select, error, dask_executor, tmp_path):
    path = tmp_path / "log.parquet"
    duckdb.sql(select).write_parquet(str(path))
    config = make_config(tmp_path, {"format": "table", "interactions": "unused.csv"})
    with pytest.raises(DataError, match=error):
        build_sequences_partitioned([path], None, config.data, tmp_path / "out", dask_executor, 2)
    sampled = make_config(tmp_path, {"format": "table", "interactions": "x.csv"}, sample_users=5)
    with pytest.raises(ConfigError, match="data.sample_users"):
        build_sequences_partitioned([path], None, sampled.data, tmp_path / "out", dask_executor, 2)


def test_numeric_ids_are_read_as_text_ids_are(dask_executor, tmp_path):
    """Ingestion reads every id as text: integer ids in a Parquet file order and partition as
    their text does (text order: "10" before "9")."""
    log = "SELECT u, i, 100 * u + n AS ts, NULL::DOUBLE AS rating, n AS src_order FROM "
    log += "range(1, 12) a(u), range(8, 14) b(i), range(2) c(n) WHERE (u + i + n) % 3 > 0"
    as_text = (
        "SELECT CAST(u AS VARCHAR) AS user_id, CAST(i AS VARCHAR) AS item_id, * EXCLUDE (u, i)"
    )
    as_ints = "SELECT u AS user_id, i AS item_id, * EXCLUDE (u, i)"
    config = make_config(tmp_path, {"format": "table", "interactions": "x.csv"}, k_core_items=1)
    tables = []
    for name, select in (("text", as_text), ("ints", as_ints)):
        path = tmp_path / f"{name}.parquet"
        duckdb.sql(f"{select} FROM ({log})").write_parquet(str(path))
        out = tmp_path / name
        out.mkdir()
        build_sequences_partitioned([path], None, config.data, out, dask_executor, 3)
        tables.append([table(out / f"{a}.parquet", order) for a, order in ORDER.items()])
    assert tables[0] == tables[1]
    assert [row[1] for row in tables[0][1]][:2] == ["10", "11"]  # items in text order


def test_evaluation_by_user_partition_gives_the_runs_own_ranks(dask_executor, tmp_path):
    """A run trained and evaluated in one process, then its test split ranked again in three
    user partitions on the cluster from its checkpoint: the same ranks, the same metrics."""
    data = run_stage(tmp_path / "data", DEMO, k_core_users=5, k_core_items=3)
    cfg = RecommenderConfig(models=["sasrec"], variants=["id"], max_epochs=2, seeds=[1], dim=16)
    ev = EvalConfig(sampled_negatives=20, ks=[10, 20])
    rows = run_recommenders(cfg, ev, data.folder, tmp_path / "rec")
    row = {r["protocol"]: r for r in rows if r["model"] == "sasrec" and r["split"] == "test"}
    (checkpoint,) = (tmp_path / "rec" / "checkpoints").glob("*.pt")
    run = TrainedRun(checkpoint, "sasrec", "id", cfg, ev, data.folder, tmp_path / "rec")

    parts = [slice(0, 100), slice(100, 101), slice(101, len(row["full"]["ranks"]))]
    ranked = list(dask_executor.map(partial(rank_users, run, "test"), parts))
    metrics = evaluate_partitioned(run, "test", dask_executor, partitions=3)

    for protocol in ("full", "sampled"):
        ranks = torch.cat([r[protocol] for r in ranked]).tolist()
        assert ranks == row[protocol]["ranks"] and len(set(ranks)) > 10  # not all at the top
        assert metrics[protocol] == {k: row[protocol][k] for k in metrics[protocol]}
