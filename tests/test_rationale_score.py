"""Zero-shot rationale scores: a known geometry gives known ranks; history never counts."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.rationale_score import markdown_table, zero_shot_scores
from slim_core.rationale_vectors import PARTS
from slim_core.rec.data import SequenceData


def one_hot(n: int, dim: int = 6) -> list[float]:
    vector = [0.0] * dim
    vector[n] = 1.0
    return vector


def write_parts(folder, rows):
    """rows: (user_idx, cutoff, vector or None) written as every part's file."""
    folder.mkdir()
    table = pa.table(
        {
            "user_idx": [r[0] for r in rows],
            "cutoff": [r[1] for r in rows],
            "vector": pa.array([r[2] for r in rows], pa.list_(pa.float32())),
        }
    )
    for part in PARTS:
        pq.write_table(table, folder / f"{part}.parquet")
    return folder


def test_a_rationale_naming_the_next_item_ranks_it_first_and_history_never_counts(tmp_path):
    # Items 1..5 (row 0 padding) with orthogonal text vectors.
    items = np.array([one_hot(0)] + [one_hot(n) for n in range(1, 6)], dtype=np.float32)
    items[0] = 0
    data = SequenceData(
        n_items=5,
        user_idx=np.array([10, 11]),
        sequences=[np.array([1, 2, 3, 4]), np.array([5, 4, 3, 2])],
    )
    folder = write_parts(
        tmp_path / "student",
        [
            (10, 2, one_hot(3)),  # user 10 before position 2 ([1, 2]): points at 3, the target
            (11, 2, one_hot(5)),  # points at 5, which is in the history: excluded, not a hit
        ],
    )
    rows = zero_shot_scores(data, items, {"student": folder}, history_items=10)
    full = next(r for r in rows if r.part == "full")
    assert full.rationales == 2 and full.hit10 == 100.0  # 5 candidates: every target in top 10
    # user 11: history 5 and 4 are no candidates; target 3 ties with items 1 and 2 at cosine 0,
    # and ties count against it: rank 2 (with the history as candidates, 5 would outrank it)
    assert full.mrr == pytest.approx(100 * (1 + 1 / 3) / 2)
    last = next(r for r in rows if r.part == "last_item")
    history = next(r for r in rows if r.part == "history")
    assert last.rationales == history.rationales == 2
    assert "| student | 2 |" in markdown_table(rows)


def test_pairs_without_a_next_item_or_a_user_are_left_out(tmp_path):
    items = np.eye(4, dtype=np.float32)
    data = SequenceData(n_items=3, user_idx=np.array([1]), sequences=[np.array([1, 2, 3])])
    folder = write_parts(
        tmp_path / "teacher",
        [(1, 3, one_hot(1, 4)), (99, 1, one_hot(1, 4)), (1, 1, one_hot(2, 4))],
    )
    rows = zero_shot_scores(data, items, {"teacher": folder}, history_items=10)
    assert {r.rationales for r in rows} == {1}
    assert next(r for r in rows if r.part == "full").mrr == 100.0  # item 2 after [1]


def test_history_control_vectors_sit_at_the_students_pairs_and_are_reused(tmp_path):
    """The `history` source: at each (user, cutoff) of the student's rationales, the mean text
    vector of the items its prompt showed (the last `history_items` before the cutoff)."""
    from slim_core.rationale_score import HistoryControl
    from slim_core.rationale_vectors import RationaleVectors
    from slim_core.stages import run_stage
    from slim_core.vectors import read_user_vectors, write_vectors
    from storage import RunFolder

    data_folder = tmp_path / "data"
    data_folder.mkdir()
    sequences = {10: [1, 2, 3, 4], 11: [5, 4, 3, 2]}
    pq.write_table(
        pa.table(
            {
                "user_idx": [u for u, seq in sequences.items() for _ in seq],
                "item_idx": [i for seq in sequences.values() for i in seq],
                "position": [p for seq in sequences.values() for p in range(len(seq))],
            }
        ),
        data_folder / "interactions.parquet",
    )
    pq.write_table(pa.table({"item_idx": [1, 2, 3, 4, 5]}), data_folder / "items.parquet")
    items = np.eye(6, dtype=np.float32)
    items_file = tmp_path / "items.parquet"
    write_vectors(items_file, {"item_idx": np.arange(1, 6)}, items[1:])
    student = RationaleVectors(
        "student",
        write_parts(tmp_path / "student", [(10, 3, one_hot(1)), (11, 2, one_hot(2))]),
        "student-key",
        {},
    )
    run = RunFolder(tmp_path / "run")

    def history_vectors(*inputs):
        return run_stage(HistoryControl(*inputs[:-1]), inputs[-1])

    made = history_vectors(student, data_folder, items_file, "items-key", 2, run)
    vectors = read_user_vectors(made.path("full"), 6)
    assert made.source == "history" and sorted(vectors.index) == [(10, 3), (11, 2)]
    np.testing.assert_allclose(vectors.get(10, 3), (items[2] + items[3]) / 2)  # last 2 of [1,2,3]
    np.testing.assert_allclose(vectors.get(11, 2), (items[5] + items[4]) / 2)
    assert run.current("rationale-vectors-history").path == made.folder
    again = history_vectors(student, data_folder, items_file, "items-key", 2, run)
    assert again.folder == made.folder and again.key == made.key
    other = history_vectors(student, data_folder, items_file, "items-key", 1, run)
    assert other.key != made.key
