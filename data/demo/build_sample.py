"""Rebuild the bundled demo sample from the Amazon "Industrial and Scientific" files.

    python data/demo/build_sample.py /path/to/amazon-scientific data/demo

A random user sample of this sparse set loses almost everything to a 5-core, so the sample is
dense by construction: the USERS users with the most interactions on the TOP_ITEMS most popular
items (ties by user id), each with their full, unchanged sequence. Deterministic: no randomness.
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

TOP_ITEMS = 400
USERS = 500
PREFIX = "Scientific"


def main(src: Path, out: Path) -> None:
    con = duckdb.connect()
    read = "delim = '\t', header = true, all_varchar = true, quote = ''"
    con.execute(
        f"""
        CREATE TABLE rows AS
        SELECT "user_id:token" AS u, "item_id_list:token_seq" AS hist, "item_id:token" AS target,
               list_filter(string_split(hist, ' '), lambda x: x <> '') || [target] AS seq
        FROM read_csv('{src}/{PREFIX}.test.inter', {read});
        CREATE TABLE inter AS SELECT u, unnest(seq) AS i FROM rows;
        CREATE TABLE top AS SELECT i FROM inter GROUP BY i ORDER BY count(*) DESC, i LIMIT {TOP_ITEMS};
        CREATE TABLE pick AS SELECT u FROM inter SEMI JOIN top USING (i)
            GROUP BY u ORDER BY count(*) DESC, u LIMIT {USERS};
        CREATE TABLE kept AS SELECT * FROM rows SEMI JOIN pick USING (u);
        CREATE TABLE kept_items AS SELECT DISTINCT unnest(seq) AS i FROM kept;
        """
    )
    out.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"""COPY (SELECT u AS "user_id:token", hist AS "item_id_list:token_seq", target AS "item_id:token"
                  FROM kept ORDER BY CAST(u AS INTEGER))
            TO '{out}/{PREFIX}-demo.test.inter' (DELIMITER '\t', HEADER true, QUOTE '')"""
    )
    maps = {
        "item2index": "SEMI JOIN kept_items ON kept_items.i = m.column1",
        "user2index": "SEMI JOIN pick ON pick.u = m.column1",
    }
    for name, join in maps.items():
        con.execute(
            f"""COPY (SELECT m.column0, m.column1
                      FROM read_csv('{src}/{PREFIX}.{name}', delim = '\t', header = false, all_varchar = true) m
                      {join} ORDER BY CAST(m.column1 AS INTEGER))
                TO '{out}/{PREFIX}-demo.{name}' (DELIMITER '\t', HEADER false, QUOTE '')"""
        )
    con.execute(
        f"""COPY (SELECT t.* FROM read_csv('{src}/{PREFIX}.text', {read}) t
                  SEMI JOIN (SELECT m.column0 AS asin FROM read_csv('{out}/{PREFIX}-demo.item2index',
                             delim = '\t', header = false, all_varchar = true) m) a
                  ON a.asin = t."item_id:token" ORDER BY t."item_id:token")
            TO '{out}/{PREFIX}-demo.text' (DELIMITER '\t', HEADER true, QUOTE '')"""
    )
    print(con.execute("SELECT count(*), sum(len(seq)) FROM kept").fetchone(), "users, interactions")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
