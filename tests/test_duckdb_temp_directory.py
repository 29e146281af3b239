"""`data.duckdb_temp_directory`: where the data stage's DuckDB spills, a speed setting only."""

from __future__ import annotations

from slim_core.data.stage import _connect
from tests.helpers import csv, make_config, run_stage

ROWS = [f"u{u},i{i},{100 * u + i}" for u in range(1, 4) for i in range(1, 5)]
LOOSE = {"k_core_users": 1, "k_core_items": 1}


def test_the_stage_spills_where_it_is_told_and_keeps_its_cache_key(tmp_path):
    log = tmp_path / "x.csv"
    log.write_text(csv("user_id,item_id,timestamp", *ROWS))
    source = {"format": "table", "interactions": str(log)}
    spill = tmp_path / "it's spill"  # a quote in the path is data, not SQL
    config = make_config(tmp_path / "run", source, duckdb_temp_directory=str(spill), **LOOSE)

    con = _connect(config.data)
    try:
        setting = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    finally:
        con.close()
    assert setting == str(spill)

    told = run_stage(tmp_path / "run", source, duckdb_temp_directory=str(spill), **LOOSE)
    default = run_stage(tmp_path / "run", source, **LOOSE)
    # Where DuckDB spills changes no output: same key, so the second run reuses the folder.
    assert told.key == default.key and told.folder == default.folder
    assert told.stats["output"]["interactions"] == len(ROWS)
