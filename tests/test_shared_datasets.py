"""The real data sets in ../shared/data: counts before filtering and a correct split."""

import csv as csvlib
import os
from collections import defaultdict
from pathlib import Path

from tests.helpers import ml100k_source, rows, run_stage, sequences_by_user

REPO = Path(__file__).resolve().parents[1]
LOOSE = {"k_core_users": 1, "k_core_items": 1}


def scientific_source(root, prefix="Scientific"):
    base = root / "amazon-scientific" if prefix == "Scientific" else root
    return {
        "format": "recbole_sequence",
        "sequences": [str(base / f"{prefix}.test.inter")],
        "item_text": str(base / f"{prefix}.text"),
        "item_index": str(base / f"{prefix}.item2index"),
        "user_index": str(base / f"{prefix}.user2index"),
    }


def test_ml100k_counts_and_chronological_split(shared_data, tmp_path):
    result = run_stage(tmp_path / "r", ml100k_source(shared_data), **LOOSE)
    assert result.stats["input"] == {
        "interactions": 100_000,
        "users": 943,
        "items": 1_682,
        "item_rows": 1_682,
    }
    assert result.stats["output"]["interactions"] == 100_000
    # Reference order in plain Python: time, then item id (as text) for the many ties.
    history = defaultdict(list)
    with open(shared_data / "ml-100k/ml-100k.inter", newline="") as fh:
        for row in csvlib.DictReader(fh, delimiter="\t"):
            history[row["user_id:token"]].append(
                (float(row["timestamp:float"]), row["item_id:token"])
            )
    expected = {u: [i for _, i in sorted(events)][-51:] for u, events in history.items()}
    assert sequences_by_user(result) == expected
    items = {r["item_id"]: r for r in rows(result, "items")}
    assert (
        items["1"]["title"] == "Toy Story"
        and items["1"]["category"] == "Animation Children's Comedy"
    )


def test_scientific_counts_and_split(shared_data, tmp_path):
    result = run_stage(tmp_path / "r", scientific_source(shared_data), dedup="exact", **LOOSE)
    assert result.stats["input"] == {
        "interactions": 59_384,
        "users": 8_442,
        "items": 4_385,
        "item_rows": 4_385,
    }
    index = {}
    with open(shared_data / "amazon-scientific/Scientific.item2index") as fh:
        for line in fh:
            asin, idx = line.rstrip("\n").split("\t")
            index[idx] = asin
    users = {}
    with open(shared_data / "amazon-scientific/Scientific.user2index") as fh:
        for line in fh:
            reviewer, idx = line.rstrip("\n").split("\t")
            users[idx] = reviewer
    expected = {}
    with open(shared_data / "amazon-scientific/Scientific.test.inter") as fh:
        next(fh)
        for line in fh:
            user, history, target = line.rstrip("\n").split("\t")
            sequence = [index[i] for i in history.split()] + [index[target]]
            if len(sequence) >= 3:  # leave-one-out needs three
                expected[users[user]] = sequence[-51:]
    got = sequences_by_user(result)
    assert got == expected
    assert len(got) == 8_442  # every user keeps >= 3 items when repeats are kept
    items = {r["item_id"]: r for r in rows(result, "items")}
    assert items["B0000223SI"]["brand"] == "PORTER-CABLE"
    assert items["B0000223SI"]["category"].startswith("Industrial & Scientific")
    assert items["B0000223SI"]["title"].startswith("PORTER-CABLE 740000801")


def test_bundled_demo_sample(tmp_path):
    from slim_core.config import load_config
    from slim_core.data import prepare_data

    config = load_config(REPO / "configs/demo.yaml")
    config.run.output_dir = tmp_path / "demo"
    config.data.source = config.data.source.model_copy(
        update={
            name: [REPO / p for p in value] if isinstance(value, list) else REPO / value
            for name, value in config.data.source.model_dump().items()
            if name in {"sequences", "item_text", "item_index", "user_index"}
        }
    )
    result = prepare_data(config)
    assert result.stats["input"]["users"] == 500
    assert result.stats["input"]["interactions"] == 6_952
    out = result.stats["output"]
    assert 450 <= out["users"] <= 500 and out["items_without_text"] == 0
    assert result.stats["sequence_length"]["min"] >= 5


def test_no_movielens_files_in_the_repository():
    # GroupLens' licence forbids redistribution: configs may point at a copy, never ship one.
    names = set()
    for _folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in {".venv", ".git", "runs"}]
        names.update(name.lower() for name in files)
    assert not names & {
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
        "u.data",
        "u.item",
        "u.user",
    }
