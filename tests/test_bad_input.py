"""Bad input gets a clear error naming the file and field (or a counted, logged drop)."""

import json
import logging

import pytest

from slim_core.errors import DataError
from tests.helpers import csv, run_stage, sequences_by_user

GOOD_ROWS = [f"u{u},i{i},{100 * u + i}" for u in range(1, 4) for i in range(1, 5)]
LOOSE = {"k_core_users": 1, "k_core_items": 1}


def table(path, **extra):
    return {"format": "table", "interactions": str(path), **extra}


def fails(tmp_path, source, *fragments, **data):
    with pytest.raises(DataError) as error:
        run_stage(tmp_path / "run", source, **{**LOOSE, **data})
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    return error.value


def test_missing_file(tmp_path):
    error = fails(tmp_path, table(tmp_path / "nope.csv"), "nope.csv", "file not found")
    assert error.path.endswith("nope.csv")


def test_missing_item_file(write, tmp_path):
    inter = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    fails(tmp_path, table(inter, items=str(tmp_path / "items.csv")), "items.csv", "file not found")


def test_misnamed_column_suggests_the_close_one(write, tmp_path):
    path = write("x.csv", csv("userid,item_id,timestamp", *GOOD_ROWS))
    error = fails(
        tmp_path, table(path), "x.csv", "column 'user_id' not found", "did you mean 'userid'"
    )
    assert error.field == "columns.user"


def test_missing_mapped_item_column(write, tmp_path):
    inter = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    items = write("items.csv", csv("item_id,name", "i1,One"))
    fails(
        tmp_path,
        table(inter, items=str(items), item_columns={"title": "title"}),
        "items.csv",
        "item_columns.title",
        "column 'title' not found",
    )


def test_wrong_type_names_row_and_value(write, tmp_path):
    path = write(
        "x.csv", csv("user_id,item_id,timestamp,rating", "u1,i1,1,4", "u1,i2,2,five", "u1,i3,3,3")
    )
    fails(tmp_path, table(path), "x.csv", "row 2: rating 'five' is not a number", "columns.rating")


def test_unparsable_timestamp(write, tmp_path):
    path = write(
        "x.csv", csv("user_id,item_id,timestamp", "u1,i1,2024-01-02", "u1,i2,yesterday", "u1,i3,5")
    )
    fails(
        tmp_path,
        table(path),
        "x.csv",
        "row 2: cannot parse timestamp 'yesterday'",
        "timestamp_format",
    )


def test_timestamp_not_matching_the_configured_format(write, tmp_path):
    path = write(
        "x.csv",
        csv(
            "user_id,item_id,timestamp", "u1,i1,03/01/2024", "u1,i2,2024-01-05", "u1,i3,04/01/2024"
        ),
    )
    fails(
        tmp_path,
        table(path, timestamp_format="%d/%m/%Y"),
        "row 2",
        "'2024-01-05'",
        "format '%d/%m/%Y'",
    )


def test_empty_timestamp(write, tmp_path):
    path = write("x.csv", csv("user_id,item_id,timestamp", "u1,i1,1", "u1,i2,", "u1,i3,3"))
    fails(tmp_path, table(path), "row 2: empty timestamp", "columns.timestamp")


def test_empty_user_id(write, tmp_path):
    path = write("x.csv", csv("user_id,item_id,timestamp", "u1,i1,1", ",i2,2"))
    fails(tmp_path, table(path), "row 2: empty user id")


def test_non_utf8_bytes_name_the_file_and_the_fix(write, tmp_path):
    text = "user_id,item_id,timestamp\n" + "\n".join(GOOD_ROWS[:-1]) + "\nu3,caf\xe9,9\n"
    path = write("latin.csv", text.encode("latin-1"))
    fails(tmp_path, table(path), "latin.csv", "not valid UTF-8", "encoding")
    result = run_stage(tmp_path / "ok", table(path, encoding="latin-1"), **LOOSE)
    assert "café" in sequences_by_user(result)["u3"]


def test_non_utf8_json(write, tmp_path):
    path = write("r.jsonl", b'{"reviewerID": "u\xff", "asin": "a", "unixReviewTime": 1}\n')
    fails(
        tmp_path, {"format": "amazon_reviews", "reviews": str(path)}, "r.jsonl", "not valid UTF-8"
    )


def test_empty_file_and_header_only(write, tmp_path):
    fails(tmp_path, table(write("empty.csv", "")), "empty.csv", "the file is empty")
    fails(
        tmp_path,
        table(write("header.csv", "user_id,item_id,timestamp\n")),
        "header.csv",
        "no interactions",
    )


def test_everything_removed_by_k_core(write, tmp_path):
    path = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    fails(tmp_path, table(path), "nothing is left after filtering", "k_core_items", k_core_items=10)


def test_amazon_reviews_missing_field(write, tmp_path):
    path = write("r.jsonl", json.dumps({"reviewerID": "u1", "asin": "a"}) + "\n")
    fails(
        tmp_path,
        {"format": "amazon_reviews", "reviews": str(path)},
        "r.jsonl",
        "'unixReviewTime' missing",
    )


def test_not_json_lines(write, tmp_path):
    path = write("r.jsonl", "user,item\n1,2\n")
    fails(tmp_path, {"format": "amazon_reviews", "reviews": str(path)}, "r.jsonl", "not JSON Lines")


def test_sequence_ids_missing_from_index(write, tmp_path):
    seqs = write(
        "s.inter", csv("user_id:token\titem_id_list:token_seq\titem_id:token", "0\t1 2\t3")
    )
    index = write("s.item2index", "A\t1\nB\t2\n")
    fails(
        tmp_path,
        {"format": "recbole_sequence", "sequences": [str(seqs)], "item_index": str(index)},
        "s.item2index",
        "1 item id(s)",
        "'3'",
    )


def test_items_without_text_are_counted_and_logged(write, tmp_path, caplog):
    inter = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    items = write("items.csv", csv("item_id,title", "i1,One", "i2,Two"))
    with caplog.at_level(logging.WARNING, logger="slim_core"):
        result = run_stage(tmp_path / "run", table(inter, items=str(items)), **LOOSE)
    assert result.stats["output"]["items_without_text"] == 2
    assert "2 of 4 items have no text" in caplog.text


def test_users_with_one_interaction_are_dropped_and_counted(write, tmp_path, caplog):
    path = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS, "lonely,i1,5"))
    with caplog.at_level(logging.INFO, logger="slim_core"):
        result = run_stage(tmp_path / "run", table(path), **LOOSE)
    assert "lonely" not in sequences_by_user(result)
    assert result.stats["dropped"]["k_core_users"] == 1
    assert "removed 1 users" in caplog.text


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_timestamps_are_refused_with_their_row(write, tmp_path, value):
    """nan, inf and 1e400 sort after every real time: accepted, they became test targets."""
    path = write("x.csv", csv("user_id,item_id,timestamp", "u1,i1,1", f"u1,i2,{value}", "u1,i3,3"))
    fails(tmp_path, table(path), "x.csv", "row 2", f"{value!r}", "not a finite time")


def test_a_csv_error_keeps_duckdbs_reason(write, tmp_path):
    """A title of 2 MB: DuckDB says why it cannot read the line; the error keeps that."""
    items = write("items.csv", "item_id,title\ni1," + "x" * 2_200_000 + "\ni2,Two\n")
    inter = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    error = fails(tmp_path, table(inter, items=str(items)), "items.csv")
    assert "max_line_size" in str(error) or "maximum line size" in str(error).lower(), str(error)


def test_a_ragged_row_is_named_with_its_column_count(write, tmp_path):
    path = write("x.csv", "user_id,item_id,timestamp\nu1,i1,1\nu1,i2\nu1,i3,3\n")
    error = fails(tmp_path, table(path), "x.csv")
    assert "not found" not in str(error) and "3" in str(error), str(error)
    assert "line 3" in str(error) or "row 2" in str(error), str(error)


def test_a_folder_where_a_file_belongs_is_a_clear_error(write, tmp_path):
    (tmp_path / "folder.csv").mkdir()
    fails(tmp_path, table(tmp_path / "folder.csv"), "folder.csv", "expected a file, found a folder")


def test_sql_in_a_setting_is_refused_and_never_run(write, tmp_path):
    """A quote in `duckdb_memory_limit` ran the SQL after it (it wrote a file)."""
    from slim_core.errors import ConfigError
    from tests.helpers import make_config

    path = write("x.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    pwned = tmp_path / "pwned.csv"
    limit = f"1GB'; COPY (SELECT 1) TO '{pwned}'; --"
    with pytest.raises((ConfigError, ValueError)) as error:
        make_config(tmp_path / "run", table(path), duckdb_memory_limit=limit, **LOOSE)
    assert "duckdb_memory_limit" in str(error.value)
    assert not pwned.exists()


def test_quotes_in_every_path_are_data_not_sql(write, tmp_path):
    """An output folder and input files with a quote in their names: the data stage, the
    recommender's reader and the catalogue all read them (a parser error before)."""
    from slim_core.rec.data import load_sequence_data
    from storage import open_catalog

    path = write("it's.csv", csv("user_id,item_id,timestamp", *GOOD_ROWS))
    result = run_stage(tmp_path / "o'run", table(path), **LOOSE)
    assert result.stats["output"]["interactions"] == len(GOOD_ROWS)
    assert load_sequence_data(result.folder).n_items == 4
    con = open_catalog(tmp_path / "o'run")
    assert con.execute("SELECT count(*) FROM interactions").fetchone()[0] == len(GOOD_ROWS)
