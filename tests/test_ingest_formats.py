"""Every supported input format yields the same interactions, order and item fields."""

import gzip
import json

import duckdb
import pytest

from tests.helpers import csv, rows, run_stage, sequences_by_user

# (user, item, unix seconds, rating). u2 has two items at t=150: the tie-break puts i1 first.
LOG = [
    ("u1", "i1", 100, 5),
    ("u1", "i2", 200, 4),
    ("u1", "i3", 300, 3),
    ("u1", "i4", 400, 4),
    ("u2", "i2", 100, 2),
    ("u2", "i3", 150, 5),
    ("u2", "i1", 150, 3),
    ("u2", "i4", 500, 1),
    ("u3", "i1", 10, 4),
    ("u3", "i4", 20, 4),
    ("u3", "i2", 30, 5),
]
ITEMS = {  # item -> (title, category, brand); i4 has no text at all
    "i1": ("Alpha Widget", "Tools", "Acme"),
    "i2": ("Beta 2.0. Pro", "Lab", "Zed"),
    "i3": ("Gamma", "Lab", None),
}
EXPECTED = {
    "u1": ["i1", "i2", "i3", "i4"],
    "u2": ["i2", "i1", "i3", "i4"],
    "u3": ["i1", "i4", "i2"],
}
LOOSE = {"k_core_users": 1, "k_core_items": 1}


def recbole_atomic(write):
    inter = csv(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float",
        *(f"{u}\t{i}\t{r}\t{t}" for u, i, t, r in LOG),
    )
    item = csv(
        "item_id:token\ttitle:token_seq\tcategory:token_seq\tbrand:token",
        *(f"{i}\t{t}\t{c}\t{b or ''}" for i, (t, c, b) in ITEMS.items()),
    )
    return {
        "format": "recbole_atomic",
        "interactions": str(write("x.inter", inter)),
        "items": str(write("x.item", item)),
    }


def table_csv(write):
    inter = csv("uid,iid,ts,stars", *(f"{u},{i},{t},{r}" for u, i, t, r in LOG))
    item = csv(
        "iid,name,genre,maker", *(f'{i},"{t}",{c},{b or ""}' for i, (t, c, b) in ITEMS.items())
    )
    return {
        "format": "table",
        "interactions": str(write("x.csv", inter)),
        "items": str(write("items.csv", item)),
        "columns": {"user": "uid", "item": "iid", "timestamp": "ts", "rating": "stars"},
        "item_columns": {"item": "iid", "title": "name", "category": "genre", "brand": "maker"},
    }


def table_parquet(write):
    path = write("x.parquet", b"")
    values = ", ".join(f"('{u}', '{i}', to_timestamp({t}), {r})" for u, i, t, r in LOG)
    duckdb.sql(
        f"SELECT * FROM (VALUES {values}) v(user_id, item_id, timestamp, rating)"
    ).write_parquet(str(path))
    items = write("items.parquet", b"")
    item_values = ", ".join(
        f"('{i}', '{t}', '{c}', {repr(b) if b else 'NULL'})" for i, (t, c, b) in ITEMS.items()
    )
    duckdb.sql(
        f"SELECT * FROM (VALUES {item_values}) v(item_id, title, categories, store)"
    ).write_parquet(str(items))
    return {"format": "table", "interactions": str(path), "items": str(items)}


def table_formatted_dates(write):
    import datetime as dt

    def stamp(t):
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%d/%m/%Y %H:%M:%S")

    inter = csv("user_id\titem_id\ttimestamp", *(f"{u}\t{i}\t{stamp(t)}" for u, i, t, _ in LOG))
    return {
        "format": "table",
        "interactions": str(write("x.tsv", inter)),
        "timestamp_format": "%d/%m/%Y %H:%M:%S",
    }


def _jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def amazon_2018(write, gz=False):
    reviews = _jsonl(
        {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": float(r), "reviewText": "ok"}
        for u, i, t, r in LOG
    )
    meta = _jsonl(
        {
            "asin": i,
            "title": t,
            "category": ["Industrial & Scientific", c],
            "brand": b or "",
            "description": ["Line one.", "Line two."],
        }
        for i, (t, c, b) in ITEMS.items()
    )
    if gz:
        return {
            "format": "amazon_reviews",
            "reviews": str(write("Sci.json.gz", gzip.compress(reviews.encode()))),
            "meta": str(write("meta_Sci.json.gz", gzip.compress(meta.encode()))),
        }
    return {
        "format": "amazon_reviews",
        "reviews": str(write("Sci.json", reviews)),
        "meta": str(write("meta_Sci.json", meta)),
    }


def amazon_2023(write):
    reviews = _jsonl(
        {
            "user_id": u,
            "asin": f"{i}-variant",
            "parent_asin": i,
            "timestamp": t * 1000,
            "rating": float(r),
            "text": "fine",
        }
        for u, i, t, r in LOG
    )
    meta = _jsonl(
        {
            "parent_asin": i,
            "title": t,
            "categories": ["Industrial & Scientific", c],
            "store": b,
            "description": [],
            "main_category": "Industrial",
            "details": {"a": 1},
        }
        for i, (t, c, b) in ITEMS.items()
    )
    return {
        "format": "amazon_reviews",
        "reviews": str(write("Sci.jsonl", reviews)),
        "meta": str(write("meta_Sci.jsonl", meta)),
    }


def recbole_sequence(write):
    item_ids = {"i1": 0, "i2": 1, "i3": 2, "i4": 3}
    user_ids = {"u1": 0, "u2": 1, "u3": 2}
    lines = [
        f"{user_ids[u]}\t{' '.join(str(item_ids[i]) for i in seq[:-1])}\t{item_ids[seq[-1]]}"
        for u, seq in EXPECTED.items()
    ]
    # A shorter prefix row of u1 too, as in RecBole's train files: the longest row wins.
    lines.append(f"0\t{item_ids['i1']}\t{item_ids['i2']}")
    text = csv(
        "item_id:token\ttext:token_seq",
        *(f"{i}\t{t}. {c}. {b or ''}. " for i, (t, c, b) in ITEMS.items()),
    )
    return {
        "format": "recbole_sequence",
        "sequences": [
            str(
                write(
                    "x.test.inter",
                    csv("user_id:token\titem_id_list:token_seq\titem_id:token", *lines),
                )
            )
        ],
        "item_text": str(write("x.text", text)),
        "item_index": str(
            write("x.item2index", "".join(f"{k}\t{v}\n" for k, v in item_ids.items()))
        ),
        "user_index": str(
            write("x.user2index", "".join(f"{k}\t{v}\n" for k, v in user_ids.items()))
        ),
    }


FORMATS = {
    "recbole_atomic": recbole_atomic,
    "table_csv": table_csv,
    "table_parquet": table_parquet,
    "table_formatted_dates": table_formatted_dates,
    "amazon_2018": amazon_2018,
    "amazon_2018_gz": lambda write: amazon_2018(write, gz=True),
    "amazon_2023": amazon_2023,
    "recbole_sequence": recbole_sequence,
}


@pytest.mark.parametrize("name", FORMATS)
def test_format_yields_same_sequences(name, write, tmp_path):
    result = run_stage(tmp_path / "run", FORMATS[name](write), **LOOSE)
    assert sequences_by_user(result) == EXPECTED
    assert result.stats["input"] == {
        **result.stats["input"],
        "interactions": 11,
        "users": 3,
        "items": 4,
    }


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "table_formatted_dates"])
def test_item_text_is_normalised(name, write, tmp_path):
    result = run_stage(tmp_path / "run", FORMATS[name](write), **LOOSE)
    items = {r["item_id"]: r for r in rows(result, "items")}
    assert items["i1"]["title"] == "Alpha Widget"
    assert items["i1"]["brand"] == "Acme"
    assert items["i1"]["category"].endswith("Tools")
    assert items["i2"]["title"] == "Beta 2.0. Pro"  # periods inside a title survive
    assert items["i3"]["brand"] is None
    assert items["i4"]["title"] is None and items["i4"]["text"] is None
    assert items["i1"]["text"].startswith("Title: Alpha Widget; Category: ")
    assert result.stats["output"]["items_without_text"] == 1


def test_amazon_meta_lists_are_joined(write, tmp_path):
    result = run_stage(tmp_path / "run", amazon_2018(write), **LOOSE)
    item = {r["item_id"]: r for r in rows(result, "items")}["i1"]
    assert item["category"] == "Industrial & Scientific > Tools"
    assert item["description"] == "Line one. Line two."


def test_timestamps_are_unix_seconds(write, tmp_path):
    for name in ("recbole_atomic", "amazon_2023", "table_parquet"):
        result = run_stage(tmp_path / name, FORMATS[name](write), **LOOSE)
        got = {(r["user_id"], r["item_id"]): r["timestamp"] for r in rows(result, "interactions")}
        assert got == {(u, i): float(t) for u, i, t, _ in LOG}, name


def test_ratings_are_kept_and_filterable(write, tmp_path):
    result = run_stage(tmp_path / "all", recbole_atomic(write), **LOOSE)
    assert sorted(r["rating"] for r in rows(result, "interactions")) == sorted(
        float(r) for *_, r in LOG
    )
    result = run_stage(tmp_path / "high", recbole_atomic(write), min_rating=3, **LOOSE)
    assert result.stats["dropped"]["below_min_rating"] == 2  # u2's ratings 2 and 1
    assert "u2" not in sequences_by_user(result)  # two left: too few for leave-one-out
