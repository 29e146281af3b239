"""The data stage's steps in idiomatic pandas: the peer `scale.py` runs beside DuckDB and Polars.

The same rules as the project's DuckDB stage: dedup "first" (earliest time, ties by file
order), iterative k-core, dense ids in id order, chronological positions, the last
`MAX_HISTORY + 1` items per user split leave-one-out, an md5 of the raw ids; the same three
Parquet files. `compare_outputs` checks another engine's files against DuckDB's, column by
column.

Ids are categoricals (sorted categories give DuckDB's id order), `groupby().transform("size")`
for the k-core, `groupby().agg(list)` for sequences, `hashlib.md5` per user, Parquet via
pyarrow. (This was `data_stage.py`, the DuckDB-vs-pandas benchmark of a retired target;
docs/benchmarks.md, History.)
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = ("interactions", "items", "sequences")

# Stage settings, the same for every engine.
K_CORE_USERS = 5
K_CORE_ITEMS = 5
MAX_HISTORY = 50
MIN_SEQUENCE_LENGTH = 3  # leave-one-out: the stage never keeps users with fewer


def _read_log(input_path: Path):
    """Ids as trimmed strings (categorical), time as float seconds, file order kept."""
    import numpy as np
    import pandas as pd

    raw = pd.read_parquet(input_path, columns=["user_id", "item_id", "timestamp"])
    return pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str).str.strip().astype("category"),
            "item_id": raw["item_id"].astype(str).str.strip().astype("category"),
            "ts": raw["timestamp"].astype("float64"),
            "src_order": np.arange(1, len(raw) + 1),
        }
    )


def _k_core(df, min_user: int, min_item: int):
    """Drop users and items under their minimum, repeating until nothing changes."""
    while True:
        user_n = df.groupby("user_id", observed=True)["ts"].transform("size")
        item_n = df.groupby("item_id", observed=True)["ts"].transform("size")
        keep = (user_n >= min_user) & (item_n >= min_item)
        if keep.all():
            return df
        df = df[keep]


def _sequences(df, keep: int):
    """Per user: the last `keep` items, leave-one-out split and a hash of the raw ids."""
    import hashlib

    import pandas as pd

    tail = df[df["position"] >= df.groupby("user_idx")["position"].transform("size") - keep]
    grouped = tail.assign(raw_id=tail["item_id"].astype(str)).groupby("user_idx", sort=True)
    seq = pd.DataFrame(
        {
            "user_id": grouped["user_id"].first().astype(str),
            "items": grouped["item_idx"].agg(list),
            "raw_items": grouped["raw_id"].agg("\x1f".join),
        }
    )
    seq["train_items"] = seq["items"].str[:-2]
    seq["valid_item"] = seq["items"].str[-2]
    seq["test_item"] = seq["items"].str[-1]
    seq["n_interactions"] = df.groupby("user_idx").size()
    seq["seq_hash"] = [hashlib.md5(s.encode()).hexdigest() for s in seq["raw_items"]]
    return seq.drop(columns="raw_items").reset_index()


def _write(frame, path: Path, schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def _write_artifacts(inter, seq, out: Path) -> None:
    import pyarrow as pa

    i32, f64, text = pa.int32(), pa.float64(), pa.string()
    ids = [("user_idx", i32), ("item_idx", i32), ("user_id", text), ("item_id", text)]
    inter = inter.assign(rating=None, user_id=inter["user_id"].astype(str))
    inter = inter.assign(item_id=inter["item_id"].astype(str))
    cols = [*ids, ("timestamp", f64), ("rating", f64), ("position", i32)]
    _write(inter.rename(columns={"ts": "timestamp"}), out / "interactions.parquet", pa.schema(cols))

    items = inter.groupby("item_idx").agg(
        item_id=("item_id", "first"), n_interactions=("ts", "size")
    )
    fields = ["title", "category", "brand", "description", "text"]
    items = items.reset_index().assign(**dict.fromkeys(fields))
    cols = [("item_idx", i32), ("item_id", text), *((f, text) for f in fields)]
    _write(items, out / "items.parquet", pa.schema([*cols, ("n_interactions", i32)]))

    list_i32 = pa.list_(i32)
    cols = [("user_idx", i32), ("user_id", text), ("items", list_i32), ("train_items", list_i32)]
    cols += [("valid_item", i32), ("test_item", i32), ("n_interactions", i32), ("seq_hash", text)]
    _write(seq, out / "sequences.parquet", pa.schema(cols))


def run_pandas(input_path: Path, out: Path) -> Path:
    """The same steps in idiomatic pandas: same rules, same three Parquet files."""
    df = _read_log(input_path)
    # dedup "first": the earliest time wins, ties by file order (stable sort keeps it).
    df = df.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"], keep="first")
    df = _k_core(df, max(K_CORE_USERS, MIN_SEQUENCE_LENGTH), K_CORE_ITEMS)
    # Categories are sorted strings, so sorting by them is id order (as DuckDB's ORDER BY).
    df = df.sort_values(["user_id", "ts", "item_id", "src_order"], kind="stable")
    df["user_idx"] = df["user_id"].cat.remove_unused_categories().cat.codes.astype("int32") + 1
    df["item_idx"] = df["item_id"].cat.remove_unused_categories().cat.codes.astype("int32") + 1
    df["position"] = df.groupby("user_idx").cumcount().astype("int32")
    seq = _sequences(df, MAX_HISTORY + 1)
    out = out / "data" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    _write_artifacts(df, seq, out)
    return out


def compare_outputs(duck: Path, pand: Path) -> dict:
    """Compare every column of every artifact (pandas output cast to DuckDB's schema)."""
    import pyarrow.parquet as pq

    report = {}
    for name in ARTIFACTS:
        a = pq.read_table(duck / f"{name}.parquet")
        b = pq.read_table(pand / f"{name}.parquet").select(a.column_names).cast(a.schema)
        key = ["user_idx", "position"] if name == "interactions" else [a.column_names[0]]
        order = [(k, "ascending") for k in key]
        a, b = a.sort_by(order), b.sort_by(order)
        differ = [c for c in a.column_names if not a[c].equals(b[c])]
        report[name] = {"rows": [a.num_rows, b.num_rows], "differing_columns": differ}
    seq = pq.read_table(duck / "sequences.parquet")
    item_ids = pq.read_table(duck / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    report["counts"] = {
        "users": seq.num_rows,
        "items": len(item_ids),
        "interactions": report["interactions"]["rows"][0],
    }
    report["raw_sequences_equal"] = raw_sequences(duck) == raw_sequences(pand)
    report["agree"] = report["raw_sequences_equal"] and not any(
        report[n]["differing_columns"] or len(set(report[n]["rows"])) > 1 for n in ARTIFACTS
    )
    return report


def raw_sequences(folder: Path) -> dict[str, list[str]]:
    """Raw user id -> raw item ids of the stored sequence, read through the items table."""
    import pyarrow.parquet as pq

    items = pq.read_table(folder / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
    by_idx = dict(zip(items["item_idx"], items["item_id"], strict=True))
    seq = pq.read_table(folder / "sequences.parquet", columns=["user_id", "items"]).to_pydict()
    return {
        user: [by_idx[i] for i in idx]
        for user, idx in zip(seq["user_id"], seq["items"], strict=True)
    }
