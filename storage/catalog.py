"""A DuckDB catalogue over a run's current Parquet artifacts: one view per file."""

from __future__ import annotations

import os

import duckdb

from storage.layout import RunFolder


def open_catalog(
    run_root: str | os.PathLike[str], database: str = ":memory:"
) -> duckdb.DuckDBPyConnection:
    """Connect to DuckDB with a view per current artifact (`interactions`, `items`, ...).

    Views read the Parquet files in place, so the catalogue is always as fresh as the run.
    """
    run = RunFolder(run_root)
    con = duckdb.connect(database)
    for stage in run.read_manifest().get("stages", {}):
        folder = run.current(stage)
        if folder is None:
            continue
        for parquet in sorted(folder.path.glob("*.parquet")):
            path = str(parquet).replace("'", "''")
            con.execute(
                f"CREATE OR REPLACE VIEW \"{parquet.stem}\" AS SELECT * FROM read_parquet('{path}')"
            )
    return con
