"""Sequence building: dedup, iterative k-core, ordering, truncation, split, ids, hashes."""

import random

import pytest

from tests.helpers import csv, rows, run_stage, sequences_by_user


def table(write, log, name="x.csv"):
    """A table source from (user, item, time) triples."""
    path = write(name, csv("user_id,item_id,timestamp", *(f"{u},{i},{t}" for u, i, t in log)))
    return {"format": "table", "interactions": str(path)}


def k_core_by_hand(log, min_user, min_item, rounds=None):
    """Plain-Python reference: drop users/items under their minimum until nothing changes;
    what each round removed is appended to `rounds`."""
    pairs = set((u, i) for u, i, _ in log)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item}
        if kept == pairs:
            return kept
        if rounds is not None:
            rounds.append(
                {
                    "interactions_removed": len(pairs) - len(kept),
                    "users_removed": len(users) - len({u for u, _ in kept}),
                    "items_removed": len(items) - len({i for _, i in kept}),
                }
            )
        pairs = kept


def test_k_core_iterates_to_a_fixed_point(write, tmp_path):
    # Round 1 drops the rare items z and v; that leaves users c and d with two items each,
    # so round 2 drops them; only then is every count >= 3.
    core = [(u, i) for u in "abef" for i in "xyw"]
    log = [
        (u, i, t)
        for t, (u, i) in enumerate(
            [*core, ("c", "x"), ("c", "y"), ("c", "z"), ("d", "x"), ("d", "w"), ("d", "v")]
        )
    ]
    result = run_stage(tmp_path / "r", table(write, log), k_core_users=3, k_core_items=3)
    assert len(result.stats["k_core"]["rounds"]) == 2
    expected = k_core_by_hand(log, 3, 3)
    assert expected == set(core)
    got = {(u, i) for u, seq in sequences_by_user(result).items() for i in seq}
    assert got == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_k_core_matches_reference_on_random_logs(write, tmp_path, seed):
    rng = random.Random(seed)
    log = [
        (f"u{rng.randint(1, 60)}", f"i{int(rng.paretovariate(1.2)) % 80}", t) for t in range(900)
    ]
    result = run_stage(tmp_path / "r", table(write, log), k_core_users=4, k_core_items=5)
    got = {(u, i) for u, seq in sequences_by_user(result).items() for i in seq}
    rounds = []
    assert got == k_core_by_hand(log, 4, 5, rounds)
    assert result.stats["k_core"]["rounds"] == rounds  # what each round removed, users and items
    assert len(rounds) >= 2  # with items and users left behind by the others' removal
    counts = {}
    for _, i in got:
        counts[i] = counts.get(i, 0) + 1
    kept_items = {row["item_id"]: row["n_interactions"] for row in rows(result, "items")}
    assert kept_items == counts


def test_users_need_three_interactions_even_with_k_one(write, tmp_path):
    log = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "y", 2), ("c", "x", 5)]
    result = run_stage(tmp_path / "r", table(write, log), k_core_users=1, k_core_items=1)
    assert set(sequences_by_user(result)) == {"a"}
    assert result.stats["dropped"]["k_core_users"] == 2
    assert result.stats["k_core"]["min_user_interactions"] == 3


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("first", ["x", "y", "z"]),  # x kept at t=1
        ("last", ["y", "z", "x"]),  # x kept at t=9
        ("exact", ["x", "y", "z", "x"]),  # only the identical row (x at t=1 twice) goes
    ],
)
def test_dedup_modes(write, tmp_path, mode, expected):
    log = [("a", "x", 1), ("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("a", "x", 9)]
    result = run_stage(
        tmp_path / "r", table(write, log), dedup=mode, k_core_users=1, k_core_items=1
    )
    assert sequences_by_user(result)["a"] == expected


def test_ties_are_broken_by_item_id_or_source_order(write, tmp_path):
    log = [("a", "c", 5), ("a", "b", 5), ("a", "a", 5), ("a", "d", 1)]
    source = table(write, log)
    by_id = run_stage(tmp_path / "id", source, k_core_users=1, k_core_items=1)
    assert sequences_by_user(by_id)["a"] == ["d", "a", "b", "c"]
    by_row = run_stage(
        tmp_path / "row", source, k_core_users=1, k_core_items=1, tie_break="source_order"
    )
    assert sequences_by_user(by_row)["a"] == ["d", "c", "b", "a"]


def test_split_truncation_ids_and_hash(write, tmp_path):
    log = [("a", f"i{n:02d}", 100 + n) for n in range(10)] + [
        ("b", "i00", 1),
        ("b", "i01", 2),
        ("b", "i02", 3),
    ]
    result = run_stage(
        tmp_path / "r", table(write, log), k_core_users=1, k_core_items=1, max_history=4
    )
    seqs = {r["user_id"]: r for r in rows(result, "sequences")}
    items = {r["item_id"]: r["item_idx"] for r in rows(result, "items")}
    a = seqs["a"]
    assert a["items"] == [items[f"i{n:02d}"] for n in range(5, 10)]  # the newest max_history + 1
    assert a["train_items"] == a["items"][:-2]
    assert (a["valid_item"], a["test_item"]) == (items["i08"], items["i09"])
    assert a["n_interactions"] == 10
    # Dense ids from 1; 0 stays free for padding.
    assert sorted(items.values()) == list(range(1, len(items) + 1))
    assert sorted(r["user_idx"] for r in seqs.values()) == [1, 2]
    # Positions count every kept interaction of the user, in time order.
    positions = [
        r["position"]
        for r in rows(result, "interactions", order="user_idx, position")
        if r["user_id"] == "a"
    ]
    assert positions == list(range(10))


def test_sequence_hash_changes_only_for_changed_users(write, tmp_path):
    log = [(u, f"i{n}", n) for u in ("a", "b", "c") for n in range(4)]
    before = {
        r["user_id"]: r["seq_hash"]
        for r in rows(
            run_stage(tmp_path / "1", table(write, log, "1.csv"), k_core_users=1, k_core_items=1),
            "sequences",
        )
    }
    again = {
        r["user_id"]: r["seq_hash"]
        for r in rows(
            run_stage(tmp_path / "2", table(write, log, "2.csv"), k_core_users=1, k_core_items=1),
            "sequences",
        )
    }
    assert again == before  # stable across runs and folders
    changed = [*log, ("b", "i0", 99)]  # b re-buys i0 later: with dedup=last its order changes
    after = {
        r["user_id"]: r["seq_hash"]
        for r in rows(
            run_stage(
                tmp_path / "3",
                table(write, changed, "3.csv"),
                k_core_users=1,
                k_core_items=1,
                dedup="last",
            ),
            "sequences",
        )
    }
    assert {u for u in after if after[u] != before[u]} == {"b"}


def test_no_target_in_its_own_history(write, tmp_path):
    rng = random.Random(7)
    log = [
        (f"u{rng.randint(1, 30)}", f"i{rng.randint(1, 40)}", rng.randint(1, 50)) for _ in range(600)
    ]
    result = run_stage(tmp_path / "r", table(write, log), k_core_users=3, k_core_items=2)
    for seq in rows(result, "sequences"):
        assert seq["test_item"] not in [*seq["train_items"], seq["valid_item"]]
        assert seq["valid_item"] not in seq["train_items"]
        assert seq["items"] == [*seq["train_items"], seq["valid_item"], seq["test_item"]]


def test_a_user_sample_is_drawn_before_filtering_the_same_on_every_run(write, tmp_path):
    """data.sample_users keeps that many users (chosen by md5 of seed and id), whole histories,
    before the k-core; the same seed gives the same users, another seed others."""
    from slim_core.config import DataConfig
    from slim_core.data import data_stage_key, summary_rows

    log = [(f"u{u:02d}", f"i{(u + k) % 7}", k) for u in range(40) for k in range(5)]
    source = table(write, log)
    full = sequences_by_user(run_stage(tmp_path / "all", source, k_core_users=1, k_core_items=1))
    first = run_stage(tmp_path / "a", source, k_core_users=1, k_core_items=1, sample_users=10)
    again = run_stage(tmp_path / "b", source, k_core_users=1, k_core_items=1, sample_users=10)
    other = run_stage(
        tmp_path / "c", source, k_core_users=1, k_core_items=1, sample_users=10, sample_seed=1
    )
    sample = sequences_by_user(first)
    assert len(sample) == 10 and sample == sequences_by_user(again)
    assert all(full[user] == items for user, items in sample.items())  # whole histories
    assert set(sequences_by_user(other)) != set(sample)
    assert first.stats["dropped"]["not_sampled"] == 30 * 5
    assert first.stats["sample"] == {"users": 10, "seed": 0}
    assert summary_rows(first.stats)[0] == (
        "sample: users / seed / interactions left out",
        "10 / 0 / 150",
    )

    plain = DataConfig(source=source)
    assert data_stage_key(plain) != data_stage_key(plain.model_copy(update={"sample_users": 10}))
