"""A read-only DuckDB catalogue over a run's current Parquet artifacts: one view per file.

What a query may touch: the current artifact files, read only. Once the views exist the
connection loses file system access except to those files (`enable_external_access = false`
with `allowed_paths`) and its configuration is locked, so a query can neither read other files
(`read_csv('/etc/passwd')`) nor attach databases nor turn access back on. `read_only_statements`
refuses every statement but SELECT and EXPLAIN (not EXPLAIN ANALYZE, which runs what it
explains) before anything runs, so `COPY ... TO` an artifact never runs either.
"""

from __future__ import annotations

import os

import duckdb

from storage.layout import RunFolder

READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryRefused(ValueError):
    """A statement that would change something: the catalogue only reads."""


def open_catalog(
    run_root: str | os.PathLike[str], database: str = ":memory:"
) -> duckdb.DuckDBPyConnection:
    """Connect to DuckDB with a view per current artifact (`interactions`, `items`, ...).

    Views read the Parquet files in place, so the catalogue is always as fresh as the run.
    """
    run = RunFolder(run_root)
    con = duckdb.connect(database)
    files = []
    for stage in run.read_manifest().get("stages", {}):
        folder = run.current(stage)
        if folder is None:
            continue
        for parquet in sorted(folder.path.glob("*.parquet")):
            # A view cannot keep a bound parameter: quote the name and the path instead.
            name = '"' + parquet.stem.replace('"', '""') + '"'
            path = "'" + str(parquet).replace("'", "''") + "'"
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({path})")
            files.append(str(parquet))
    con.execute("SET allowed_paths = ?", [files])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def read_only_statements(sql: str) -> None:
    """Raise `QueryRefused` unless every statement in `sql` only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        return  # a syntax error: DuckDB says what is wrong when the query runs
    for statement in statements:
        # EXPLAIN ANALYZE runs the statement it explains (a COPY TO would write)
        analyze = statement.query.split()[:2] == ["EXPLAIN", "ANALYZE"]
        if statement.type not in READ_ONLY or analyze:
            kind = "EXPLAIN ANALYZE" if analyze else statement.type.name
            raise QueryRefused(
                f"`slim query` only reads the run's artifacts: {kind} statements are refused "
                "(SELECT and EXPLAIN run)"
            )
