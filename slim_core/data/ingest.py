"""Ingestion: read the user's files into two DuckDB tables with one shape for every format.

    raw_interactions(user_id VARCHAR, item_id VARCHAR, ts DOUBLE, rating DOUBLE, src_order BIGINT)
    raw_items(item_id VARCHAR, title VARCHAR, category VARCHAR, brand VARCHAR, description VARCHAR)

`ts` is unix seconds (NULL for sources that only give an order); `src_order` is the row's place
in its source (for sequence files: the position in the user's sequence). Every problem a user
can fix (missing file or column, a value of the wrong type, bytes that are not UTF-8) is raised
as a `DataError` that names the file and the field, and the row where there is one.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from slim_core.config import (
    AmazonReviewsSource,
    DataSource,
    InteractionColumns,
    ItemColumns,
    RecBoleAtomicSource,
    RecBoleSequenceSource,
    TableSource,
)
from slim_core.errors import DataError

# Common column names tried, in order, for an item text field the config leaves empty.
ITEM_FIELD_CANDIDATES: dict[str, tuple[str, ...]] = {
    "title": ("title", "movie_title", "name", "item_name"),
    "category": ("category", "categories", "class", "genre", "genres", "main_category"),
    "brand": ("brand", "store", "manufacturer"),
    "description": ("description",),
}
ITEM_TEXT_FIELDS = ("title", "category", "brand", "description")
# Views this module builds itself already use the normalised field names.
NORMALISED_ITEM_COLUMNS = ItemColumns(**{field: field for field in ITEM_TEXT_FIELDS})


@dataclass(frozen=True)
class IngestResult:
    input_files: list[Path]
    has_timestamps: bool  # False: order comes from the source (sequence files)
    raw_interactions: int
    raw_items: int


def ingest(con: duckdb.DuckDBPyConnection, source: DataSource) -> IngestResult:
    """Create `raw_interactions` and `raw_items` in `con` from the configured source."""
    readers = {
        "recbole_atomic": _ingest_recbole_atomic,
        "recbole_sequence": _ingest_recbole_sequence,
        "amazon_reviews": _ingest_amazon_reviews,
        "table": _ingest_table,
    }
    files, has_timestamps = readers[source.format](con, source)
    n_inter = con.execute("SELECT count(*) FROM raw_interactions").fetchone()[0]
    n_items = con.execute("SELECT count(*) FROM raw_items").fetchone()[0]
    if n_inter == 0:
        raise DataError("no interactions to read (the file has no data rows)", path=files[0])
    return IngestResult(files, has_timestamps, n_inter, n_items)


def input_files(source: DataSource) -> list[Path]:
    """Every file the source reads, in a stable order (for fingerprints)."""
    match source:
        case RecBoleAtomicSource() | TableSource():
            paths = [source.interactions, source.items]
        case RecBoleSequenceSource():
            paths = [*source.sequences, source.item_text, source.item_index, source.user_index]
        case AmazonReviewsSource():
            paths = [source.reviews, source.meta]
    return [Path(p) for p in paths if p is not None]


# ---------------------------------------------------------------------------------------------
# Small SQL helpers


def _q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str | Path) -> str:
    """Quote a string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _check_file(path: Path, field: str) -> None:
    if not path.exists():
        raise DataError("file not found", path=path, field=field)
    if not path.is_file():
        raise DataError("expected a file, found a folder", path=path, field=field)
    if path.stat().st_size == 0:
        raise DataError("the file is empty", path=path, field=field)


def _duckdb_error(error: duckdb.Error, path: Path, field: str) -> DataError:
    message = str(error)
    if "not utf-8 encoded" in message.lower() or "invalid unicode" in message.lower():
        line = re.search(r"Line: (\d+)", message)
        where = f" (line {line.group(1)})" if line else ""
        return DataError(
            f"the file is not valid UTF-8{where}; set `encoding` (e.g. latin-1) in the source "
            "config or convert the file to UTF-8",
            path=path,
            field=field,
        )
    # DuckDB's whole message: its reason and the fix it suggests are after the first line. Only
    # a quoted line is cut (a 2 MB title would otherwise fill the terminal).
    lines = [
        line if len(line) <= 300 else f"{line[:200]}... ({len(line):,} characters)"
        for line in message.strip().splitlines()
    ]
    reason = "\n".join(lines) if lines else type(error).__name__
    return DataError(f"could not be read: {reason}", path=path, field=field)


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> list[str]:
    return [row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()]


def _create_view(
    con: duckdb.DuckDBPyConnection, view: str, reader_sql: str, path: Path, field: str
) -> list[str]:
    """Materialise a file as a table with its row number (`src_row`, from 1) and return its columns.

    RecBole's type suffixes (`user_id:token`) are removed from column names.
    """
    # Parquet knows its row numbers; for text files a window numbers rows in scan order.
    parquet = reader_sql.startswith("read_parquet(")
    numbered = (
        f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS src_row FROM {reader_sql[:-1]}, file_row_number = true)"
        if parquet
        else f"SELECT *, row_number() OVER () AS src_row FROM {reader_sql}"
    )
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {view}_file AS {numbered}")
        columns = [c for c in _columns(con, f"{view}_file") if c != "src_row"]
    except duckdb.Error as error:
        raise _duckdb_error(error, path, field) from None
    renames = [f"{_q(c)} AS {_q(c.split(':', 1)[0])}" for c in columns]
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {', '.join(renames)}, src_row FROM {view}_file"
    )
    return [c.split(":", 1)[0] for c in columns]


def _read_delimited_sql(
    path: Path, *, delimiter: str | None, encoding: str, header: bool = True
) -> str:
    options = [
        "all_varchar = true",
        f"header = {str(header).lower()}",
        f"encoding = {_lit(encoding)}",
    ]
    if delimiter is not None:
        options.append(f"delim = {_lit(delimiter)}")
        # RecBole-style tab files are not quoted; titles may contain a lone quote.
        if delimiter == "\t":
            options.append("quote = ''")
    return f"read_csv({_lit(path)}, {', '.join(options)})"


def _read_table_sql(path: Path, *, delimiter: str | None, encoding: str) -> str:
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith(".parquet"):
        return f"read_parquet({_lit(path)})"
    if delimiter is None and (suffix.endswith(".tsv") or suffix.endswith(".tsv.gz")):
        delimiter = "\t"
    return _read_delimited_sql(path, delimiter=delimiter, encoding=encoding)


def _require_column(columns: list[str], wanted: str, path: Path, field: str) -> str:
    if wanted in columns:
        return wanted
    ragged = _first_ragged_row(path, columns)
    if ragged is not None:
        row, found, expected = ragged
        raise DataError(
            f"row {row} (line {row + 1}) has {found} fields, the header {expected}: every row "
            "needs the header's number of fields",
            path=path,
            field=field,
        )
    close = difflib.get_close_matches(wanted, columns, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"column {wanted!r} not found; the file has columns {columns}{hint} "
        f"(set it under the source's `{field.split('.')[0]}` mapping)",
        path=path,
        field=field,
    )


def _first_ragged_row(path: Path, columns: list[str]) -> tuple[int, int, int] | None:
    """(data row, its field count, the header's) of the first row whose field count differs,
    when DuckDB read a delimited file as one column: its sniffer finds no delimiter that fits
    every row, so it names none; this finds the row a user must fix."""
    if len(columns) != 1 or path.suffix.lower() in (".parquet", ".json", ".jsonl", ".gz"):
        return None
    delimiter = max(",;\t|", key=columns[0].count)
    if delimiter not in columns[0]:
        return None
    with path.open(encoding="utf-8", errors="replace", newline="") as file:
        rows = csv.reader(file, delimiter=delimiter)
        expected = len(next(rows, []))
        for number, fields in enumerate(rows, start=1):
            if fields and len(fields) != expected:
                return number, len(fields), expected
    return None


def _first_bad_row(
    con: duckdb.DuckDBPyConnection, view: str, condition: str, column: str
) -> tuple[int, object] | None:
    row = con.execute(
        f"SELECT src_row, {_q(column)} FROM {view} WHERE {condition} ORDER BY src_row LIMIT 1"
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _time_expr(column: str, column_type: str, *, fmt: str | None, unit: str) -> str:
    """Unix seconds from a number, a date/time value, an ISO date/time string, or `fmt`."""
    scale = 1000.0 if unit == "ms" else 1.0
    kind = column_type.upper()
    if kind.startswith(("TIMESTAMP", "DATE")):
        return f"epoch({_q(column)})"
    if kind in {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "FLOAT",
        "DOUBLE",
    } or kind.startswith(("DECIMAL", "U")):
        return f"CAST({_q(column)} AS DOUBLE) / {scale}"
    text = f"CAST({_q(column)} AS VARCHAR)"
    parsed = (
        f"epoch(try_strptime({text}, {_lit(fmt)}))"
        if fmt
        else f"epoch(TRY_CAST({text} AS TIMESTAMP))"
    )
    return f"COALESCE(TRY_CAST({text} AS DOUBLE) / {scale}, {parsed})"


def _load_interactions(
    con: duckdb.DuckDBPyConnection,
    view: str,
    path: Path,
    *,
    user: str,
    item: str,
    timestamp: str | None,
    rating: str | None,
    time_format: str | None = None,
    time_unit: str = "s",
    field_prefix: str = "columns",
) -> None:
    """Fill `raw_interactions` from `view` in one pass, then check it and name the first bad row."""
    types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {view})").fetchall())
    ts_sql = "NULL::DOUBLE"
    if timestamp is not None:
        ts_sql = _time_expr(timestamp, types[timestamp], fmt=time_format, unit=time_unit)
    rating_sql = "NULL::DOUBLE" if rating is None else f"TRY_CAST({_q(rating)} AS DOUBLE)"
    rating_bad = (
        "false" if rating is None else f"({_q(rating)} IS NOT NULL AND {rating_sql} IS NULL)"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE raw_interactions AS
        SELECT trim(CAST({_q(user)} AS VARCHAR)) AS user_id,
               trim(CAST({_q(item)} AS VARCHAR)) AS item_id,
               {ts_sql} AS ts,
               {rating_sql} AS rating,
               src_row AS src_order,
               {rating_bad} AS rating_bad
        FROM {view}
        """
    )
    checks = _interaction_checks(user, item, timestamp, rating, time_format)
    _raise_first_bad_row(con, view, path, checks, field_prefix)
    con.execute(
        f"ALTER TABLE raw_interactions DROP COLUMN rating_bad; DROP VIEW {view}; DROP TABLE {view}_file"
    )


def _interaction_checks(
    user: str, item: str, timestamp: str | None, rating: str | None, time_format: str | None
) -> list[tuple[str, str, str, str]]:
    """(condition on raw_interactions, source column, field, message), reported in this order."""
    checks = [
        ("user_id IS NULL OR user_id = ''", user, "user", "empty user id"),
        ("item_id IS NULL OR item_id = ''", item, "item", "empty item id"),
    ]
    if timestamp is not None:
        expected = (
            f"a time in format {time_format!r}"
            if time_format
            else "a unix time or an ISO date/time (set `timestamp_format` for other formats)"
        )
        checks.append(
            (
                "ts IS NULL",
                timestamp,
                "timestamp",
                "cannot parse timestamp {value!r}: expected " + expected,
            )
        )
        # nan, inf and 1e400 (read as inf) would sort after every real time: test targets
        checks.append(
            (
                "NOT isfinite(ts)",
                timestamp,
                "timestamp",
                "timestamp {value!r} is not a finite time (nan, inf or out of range)",
            )
        )
    if rating is not None:
        checks.append(("rating_bad", rating, "rating", "rating {value!r} is not a number"))
    return checks


def _raise_first_bad_row(
    con: duckdb.DuckDBPyConnection,
    view: str,
    path: Path,
    checks: list[tuple[str, str, str, str]],
    field_prefix: str,
) -> None:
    """A DataError naming the first source row that fails a check, in the checks' order."""
    firsts = con.execute(
        "SELECT "
        + ", ".join(f"min(src_order) FILTER (WHERE {condition})" for condition, *_ in checks)
        + " FROM raw_interactions"
    ).fetchone()
    for (_, column, field, message), row in zip(checks, firsts, strict=True):
        if row is not None:
            value = con.execute(
                f"SELECT {_q(column)} FROM {view} WHERE src_row = ?", [row]
            ).fetchone()[0]
            if field == "timestamp" and (value is None or not str(value).strip()):
                message = "empty timestamp"
            raise DataError(
                f"row {row}: " + message.format(value=value),
                path=path,
                field=f"{field_prefix}.{field} ({column})",
            )


def _resolve_item_columns(
    columns: list[str], mapping: ItemColumns, path: Path
) -> dict[str, str | None]:
    """Map each text field to a column: the configured one (must exist) or a common name."""
    resolved: dict[str, str | None] = {}
    for field in ITEM_TEXT_FIELDS:
        configured = getattr(mapping, field)
        if configured is not None:
            resolved[field] = _require_column(columns, configured, path, f"item_columns.{field}")
        else:
            resolved[field] = next((c for c in ITEM_FIELD_CANDIDATES[field] if c in columns), None)
    return resolved


def _text_sql(column: str | None) -> str:
    """A text value: NULL when absent or blank; JSON lists are joined (categories with ' > ')."""
    if column is None:
        return "NULL::VARCHAR"
    value = f"CAST({_q(column)} AS VARCHAR)"
    return f"NULLIF(trim(regexp_replace({value}, '\\s+', ' ', 'g')), '')"


def _load_items(
    con: duckdb.DuckDBPyConnection, view: str | None, path: Path | None, mapping: ItemColumns | None
) -> None:
    if view is None or path is None or mapping is None:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE raw_items (item_id VARCHAR, title VARCHAR, "
            "category VARCHAR, brand VARCHAR, description VARCHAR)"
        )
        return
    columns = _columns(con, view)
    item = _require_column(columns, mapping.item, path, "item_columns.item")
    fields = _resolve_item_columns(columns, mapping, path)
    selects = ", ".join(f"{_text_sql(fields[f])} AS {f}" for f in ITEM_TEXT_FIELDS)
    # Duplicate item rows: the first one in the file wins.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE raw_items AS
        SELECT item_id, {", ".join(f"arg_min({f}, src_row) AS {f}" for f in ITEM_TEXT_FIELDS)}
        FROM (SELECT trim(CAST({_q(item)} AS VARCHAR)) AS item_id, {selects}, src_row FROM {view})
        WHERE item_id IS NOT NULL AND item_id <> ''
        GROUP BY item_id
        """
    )


# ---------------------------------------------------------------------------------------------
# Formats


def _ingest_recbole_atomic(
    con: duckdb.DuckDBPyConnection, src: RecBoleAtomicSource
) -> tuple[list[Path], bool]:
    return _ingest_tables(
        con, src, lambda path: _read_delimited_sql(path, delimiter="\t", encoding=src.encoding)
    )


def _ingest_table(con: duckdb.DuckDBPyConnection, src: TableSource) -> tuple[list[Path], bool]:
    return _ingest_tables(
        con,
        src,
        lambda path: _read_table_sql(path, delimiter=src.delimiter, encoding=src.encoding),
        time_format=src.timestamp_format,
        time_unit=src.timestamp_unit,
    )


def _ingest_tables(
    con: duckdb.DuckDBPyConnection,
    src: RecBoleAtomicSource | TableSource,
    reader: Callable[[Path], str],
    **time_options: str | None,
) -> tuple[list[Path], bool]:
    """An interaction table with a column mapping, plus an optional item table."""
    _check_file(src.interactions, "source.interactions")
    columns = _create_view(
        con, "inter_src", reader(src.interactions), src.interactions, "source.interactions"
    )
    _load_interactions(
        con,
        "inter_src",
        src.interactions,
        **_mapped_columns(columns, src.columns, src.interactions),
        **time_options,
    )
    items_view = None
    if src.items is not None:
        _check_file(src.items, "source.items")
        _create_view(con, "item_src", reader(src.items), src.items, "source.items")
        items_view = "item_src"
    _load_items(con, items_view, src.items, src.item_columns)
    return input_files(src), True


def _mapped_columns(
    columns: list[str], mapping: InteractionColumns, path: Path
) -> dict[str, str | None]:
    rating = mapping.rating
    if rating is None:
        rating = "rating" if "rating" in columns else None
    return {
        "user": _require_column(columns, mapping.user, path, "columns.user"),
        "item": _require_column(columns, mapping.item, path, "columns.item"),
        "timestamp": _require_column(columns, mapping.timestamp, path, "columns.timestamp"),
        "rating": None
        if rating is None
        else _require_column(columns, rating, path, "columns.rating"),
    }


def _read_index(
    con: duckdb.DuckDBPyConnection, view: str, path: Path, field: str, encoding: str
) -> None:
    """A RecBole `key \\t integer id` map (no header; a header row is skipped if present)."""
    _check_file(path, field)
    sql = _read_delimited_sql(path, delimiter="\t", encoding=encoding, header=False)
    columns = _create_view(con, f"{view}_raw", sql, path, field)
    if len(columns) != 2:
        raise DataError(
            f"expected 2 tab-separated columns (key, integer id), found {len(columns)}",
            path=path,
            field=field,
        )
    key, idx = (_q(c) for c in columns)
    bad = con.execute(
        f"SELECT src_row, {idx} FROM {view}_raw WHERE TRY_CAST({idx} AS BIGINT) IS NULL AND src_row > 1 LIMIT 1"
    ).fetchone()
    if bad:
        raise DataError(f"row {bad[0]}: id {bad[1]!r} is not an integer", path=path, field=field)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {view} AS SELECT trim({key}) AS key, CAST({idx} AS VARCHAR) AS idx "
        f"FROM {view}_raw WHERE TRY_CAST({idx} AS BIGINT) IS NOT NULL"
    )


def _ingest_recbole_sequence(
    con: duckdb.DuckDBPyConnection, src: RecBoleSequenceSource
) -> tuple[list[Path], bool]:
    _sequence_rows(con, src)
    _sequence_interactions(con, src)
    items_view = _sequence_item_text(con, src)
    _load_items(con, items_view, src.item_text, NORMALISED_ITEM_COLUMNS)
    return input_files(src), False


def _sequence_rows(con: duckdb.DuckDBPyConnection, src: RecBoleSequenceSource) -> None:
    """`seq_rows`: each user's full item sequence, from the sequence files' longest row."""
    parts = []
    for n, path in enumerate(src.sequences):
        field = f"source.sequences[{n}]"
        _check_file(path, field)
        view = f"seq_src_{n}"
        columns = _create_view(
            con, view, _read_delimited_sql(path, delimiter="\t", encoding=src.encoding), path, field
        )
        for wanted in ("user_id", "item_id_list", "item_id"):
            _require_column(columns, wanted, path, field)
        bad = _first_bad_row(
            con, view, "user_id IS NULL OR item_id IS NULL OR trim(item_id) = ''", "user_id"
        )
        if bad:
            raise DataError(f"row {bad[0]}: empty user_id or item_id", path=path, field=field)
        parts.append(
            f"SELECT trim(user_id) AS user_id, "
            f"list_filter(string_split(trim(coalesce(item_id_list, '')), ' '), lambda x: x <> '') "
            f"|| [trim(item_id)] AS seq, {n} AS file_no, src_row FROM {view}"
        )
    # A user's longest row holds the full sequence (RecBole's test file has every prefix's end).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE seq_rows AS
        SELECT user_id, arg_max(seq, [len(seq), -file_no, -src_row]) AS seq
        FROM ({" UNION ALL ".join(parts)}) GROUP BY user_id
        """
    )


def _sequence_interactions(con: duckdb.DuckDBPyConnection, src: RecBoleSequenceSource) -> None:
    """`raw_interactions` from `seq_rows`, ids mapped through the index files when given."""
    mapped, joins = {"user": "s.user_id", "item": "s.item_id"}, ""
    for what, path, ids_sql in (
        ("user", src.user_index, "SELECT DISTINCT user_id AS idx FROM seq_rows"),
        ("item", src.item_index, "SELECT DISTINCT unnest(seq) AS idx FROM seq_rows"),
    ):
        if path is not None:
            field = f"source.{what}_index"
            _read_index(con, f"{what}_index", path, field, src.encoding)
            _check_mapped(con, ids_sql, f"{what}_index", path, field, what)
            joins += f" JOIN {what}_index {what}_map ON {what}_map.idx = s.{what}_id"
            mapped[what] = f"{what}_map.key"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE raw_interactions AS
        SELECT {mapped["user"]} AS user_id, {mapped["item"]} AS item_id, NULL::DOUBLE AS ts,
               NULL::DOUBLE AS rating, s.pos AS src_order
        FROM (SELECT user_id, unnest(seq) AS item_id, unnest(range(len(seq))) AS pos FROM seq_rows) s {joins}
        """
    )


def _sequence_item_text(con: duckdb.DuckDBPyConnection, src: RecBoleSequenceSource) -> str | None:
    """The view of item text fields parsed from `source.item_text`, if there is one."""
    items_view = None
    if src.item_text is not None:
        _check_file(src.item_text, "source.item_text")
        columns = _create_view(
            con,
            "text_src",
            _read_delimited_sql(src.item_text, delimiter="\t", encoding=src.encoding),
            src.item_text,
            "source.item_text",
        )
        if len(columns) < 2:
            raise DataError(
                "expected 2 tab-separated columns (item, text)",
                path=src.item_text,
                field="source.item_text",
            )
        key, text = (_q(c) for c in columns[:2])
        # "title. category. brand." -> fields; greedy title, so periods inside titles survive.
        con.execute(
            f"""
            CREATE OR REPLACE TEMP VIEW text_parsed AS
            SELECT trim({key}) AS item_id, t, regexp_extract(t, '^(.*)\\. (.*)\\. (.*?)\\.$',
                   ['title', 'category', 'brand']) AS m, src_row
            FROM (SELECT {key}, trim(coalesce({text}, '')) AS t, src_row FROM text_src)
            """
        )
        con.execute(
            """
            CREATE OR REPLACE TEMP VIEW text_fields AS
            SELECT item_id,
                   CASE WHEN m.title = '' AND m.category = '' AND m.brand = '' THEN t ELSE m.title END AS title,
                   m.category AS category, m.brand AS brand, NULL AS description, src_row
            FROM text_parsed
            """
        )
        items_view = "text_fields"
    return items_view


def _check_mapped(
    con: duckdb.DuckDBPyConnection, ids_sql: str, index: str, path: Path, field: str, what: str
) -> None:
    missing = con.execute(
        f"SELECT count(*), min(idx) FROM ({ids_sql}) ids ANTI JOIN {index} USING (idx)"
    ).fetchone()
    if missing[0]:
        raise DataError(
            f"{missing[0]} {what} id(s) used in the sequence files have no entry here "
            f"(first: {missing[1]!r})",
            path=path,
            field=field,
        )


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else open(path, encoding="utf-8")
    )


def _first_json_record(path: Path, field: str) -> dict:
    try:
        with _open_text(path) as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise DataError(
                            "line 1: expected a JSON object per line", path=path, field=field
                        )
                    return record
    except UnicodeDecodeError:
        raise DataError("the file is not valid UTF-8", path=path, field=field) from None
    except (json.JSONDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"not JSON Lines: {error}", path=path, field=field) from None
    raise DataError("the file has no records", path=path, field=field)


# Amazon Reviews field names by release.
AMAZON_REVIEW_FIELDS = {
    2018: {
        "user": "reviewerID",
        "item": "asin",
        "timestamp": "unixReviewTime",
        "rating": "overall",
        "unit": "s",
    },
    2023: {
        "user": "user_id",
        "item": None,
        "timestamp": "timestamp",
        "rating": "rating",
        "unit": "ms",
    },
}


def _ingest_amazon_reviews(
    con: duckdb.DuckDBPyConnection, src: AmazonReviewsSource
) -> tuple[list[Path], bool]:
    _check_file(src.reviews, "source.reviews")
    first = _first_json_record(src.reviews, "source.reviews")
    release = 2018 if "reviewerID" in first else 2023
    spec = dict(AMAZON_REVIEW_FIELDS[release])
    if release == 2023:
        spec["item"] = src.item_key if src.item_key in first else "asin"
    for key in ("user", "item", "timestamp"):
        if spec[key] not in first:
            raise DataError(
                f"JSON field {spec[key]!r} missing in the first record (Amazon Reviews {release} "
                f"format expected; found fields {sorted(first)})",
                path=src.reviews,
                field=f"source.reviews.{key}",
            )
    wanted = {spec[k]: "VARCHAR" for k in ("user", "item", "timestamp", "rating")}
    reader = f"read_json({_lit(src.reviews)}, format = 'newline_delimited', columns = {wanted})"
    _create_view(con, "inter_src", reader, src.reviews, "source.reviews")
    _load_interactions(
        con,
        "inter_src",
        src.reviews,
        user=spec["user"],
        item=spec["item"],
        timestamp=spec["timestamp"],
        rating=spec["rating"],
        time_unit=spec["unit"],
        field_prefix="reviews",
    )
    items_view = None
    if src.meta is not None:
        _check_file(src.meta, "source.meta")
        meta_first = _first_json_record(src.meta, "source.meta")
        key = (
            spec["item"]
            if spec["item"] in meta_first
            else ("parent_asin" if "parent_asin" in meta_first else "asin")
        )
        present = set(meta_first)
        cols = {key: "VARCHAR", "title": "VARCHAR", "description": "JSON"}
        category = "categories" if release == 2023 or "categories" in present else "category"
        brand = "store" if release == 2023 or "store" in present else "brand"
        cols.update({category: "JSON", brand: "VARCHAR"})
        if release == 2023:
            cols["main_category"] = "VARCHAR"
        reader = f"read_json({_lit(src.meta)}, format = 'newline_delimited', columns = {cols})"
        _create_view(con, "meta_raw", reader, src.meta, "source.meta")
        fallback = "main_category" if "main_category" in cols else "NULL"
        con.execute(
            f"""
            CREATE OR REPLACE TEMP VIEW meta_src AS
            SELECT {_q(key)} AS item_id, title,
                   coalesce(NULLIF({_json_text(category, " > ")}, ''), {fallback}) AS category,
                   {_q(brand)} AS brand, {_json_text("description", " ")} AS description, src_row
            FROM meta_raw
            """
        )
        items_view = "meta_src"
    _load_items(con, items_view, src.meta, NORMALISED_ITEM_COLUMNS)
    return input_files(src), True


def _json_text(column: str, separator: str) -> str:
    """A JSON value as text: lists joined with `separator`, strings as they are."""
    c = _q(column)
    return (
        f"CASE json_type({c}) WHEN 'ARRAY' THEN array_to_string(CAST({c} AS VARCHAR[]), {_lit(separator)}) "
        f"WHEN 'NULL' THEN NULL ELSE {c} ->> '$' END"
    )
