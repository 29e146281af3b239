"""Rationale vectors: as-of lookup (no later rationale is ever read), parts, encoding stage,
train-cutoff prompts, and the report's SLIM-gain and history-length tables."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.rec.data import SequenceData, UserVectorIndex
from slim_core.teacher.stage import history_prompts


def sequences(lengths: list[int]) -> SequenceData:
    return SequenceData(
        n_items=50,
        user_idx=np.arange(1, len(lengths) + 1),
        sequences=[np.arange(1, n + 1) + 10 * u for u, n in enumerate(lengths)],
    )


def test_lookup_reads_the_latest_rationale_at_or_before_each_cutoff():
    data = sequences([8, 6])
    vectors = {(1, 3): np.full(2, 3.0), (1, 5): np.full(2, 5.0)}  # user_idx 1 = row 0
    index = UserVectorIndex(data, vectors, dim=2)
    cutoffs = np.array([[1, 2, 3, 4, 5, 7]])
    rows = index.lookup(np.array([0]), cutoffs)
    assert index.matrix[rows][0, :, 0].tolist() == [0, 0, 3, 3, 5, 5]
    assert index.lookup(np.array([1]), np.array([[3, 5]])).tolist() == [[0, 0]]  # none: zeros
    assert index.users == 1


def test_train_cutoff_prompts_hold_only_earlier_items():
    data = sequences([6, 3])
    items = {i: {"item_id": f"i{i}", "title": f"Item {i}"} for i in range(1, 60)}
    prompts = history_prompts(
        data,
        items,
        [0, 1],
        ["train", "valid", "test"],
        version="student-v3",
        max_items=20,
        token_budget=None,
    )
    by_key = {(p.user_idx, split): p for split, p in prompts}
    assert (2, "train") not in by_key  # a 3-item user has nothing before its last training item
    train = by_key[(1, "train")]
    assert train.cutoff == 3 and train.history_items(data.sequences[0]) == (1, 2, 3)
    for _, prompt in prompts:
        row = int(prompt.user_idx) - 1
        target = int(data.sequences[row][prompt.cutoff])
        shown = prompt.history_items(data.sequences[row])
        assert f"Item {target}\n" not in prompt.text and target not in shown


def test_train_cutoff_lead_moves_the_train_rationale_earlier_never_before_item_two():
    data = sequences([12, 5, 4, 3])
    # Last training item at n - 3; a lead moves it back, clamped to position 1.
    assert [data.cutoff(u, "train") for u in range(4)] == [9, 2, 1, 0]
    assert [data.cutoff(u, "train", 4) for u in range(4)] == [5, 1, 1, 0]
    assert [data.cutoff(u, "valid", 4) for u in range(4)] == [10, 3, 2, 1]  # others unchanged
    assert [data.cutoff(u, "test", 4) for u in range(4)] == [11, 4, 3, 2]
    items = {i: {"item_id": f"i{i}", "title": f"Item {i}"} for i in range(1, 60)}
    prompts = history_prompts(
        data,
        items,
        range(4),
        ["train"],
        version="student-v3",
        max_items=20,
        token_budget=None,
        train_lead=4,
    )
    assert [(p.user_idx, p.cutoff) for _, p in prompts] == [(1, 5), (2, 1), (3, 1)]
    for _, prompt in prompts:
        sequence = data.sequences[prompt.user_idx - 1]
        target = int(sequence[prompt.cutoff])
        assert (
            target not in prompt.history_items(sequence) and f"Item {target}\n" not in prompt.text
        )


def test_with_a_lead_the_last_lead_plus_one_training_targets_read_the_train_rationale():
    from slim_core.rec.data import training_windows

    data = sequences([12])
    lead = 4
    train_cutoff = data.cutoff(0, "train", lead)
    index = UserVectorIndex(data, {(1, train_cutoff): np.ones(2)}, dim=2)
    windows = training_windows(data, max_len=50)
    rows = index.lookup(windows.users[:, None], windows.cutoffs)
    reading = windows.cutoffs[rows > 0]
    # Training targets are positions 1..9 (the train part is items 0..9); 5..9 read it.
    assert sorted(reading.tolist()) == [5, 6, 7, 8, 9]
    # Every target that reads it comes after the items the rationale was written from.
    assert (reading >= train_cutoff).all()


def rationale_file(path: Path) -> Path:
    rows = [
        {
            "user_idx": 1,
            "cutoff": 5,
            "rationale": "Step 1: a\nStep 2: b\nStep 3: c",
            "step1": "likes glass",
            "step2": "Lab brands",
            "step3": "Flask 9",
        },
        {
            "user_idx": 2,
            "cutoff": 4,
            "rationale": "just some words",
            "step1": "",
            "step2": "",
            "step3": "",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_part_texts(tmp_path):
    from slim_core.rationale_vectors import part_texts

    rows = pq.read_table(rationale_file(tmp_path / "r.parquet")).to_pylist()
    assert part_texts(rows[0]) == {
        "full": "Step 1: likes glass\nStep 2: Lab brands\nStep 3: Flask 9",
        "step1": "likes glass",
        "step2": "Lab brands",
        "step3": "Flask 9",
    }
    assert part_texts(rows[1]) == {
        "full": "just some words",
        "step1": None,
        "step2": None,
        "step3": None,
    }


def test_encode_rationales_once_per_text_and_encoder(tmp_path):
    from slim_core.encoding import TextEncoder
    from slim_core.rationale_vectors import encode_rationales
    from slim_core.vectors import read_user_vectors
    from storage import RunFolder

    source = rationale_file(tmp_path / "student_rationales.parquet")
    encoder = TextEncoder()
    first = encode_rationales("student", source, RunFolder(tmp_path / "run"), encoder)
    full = read_user_vectors(first.path("full"))
    step1 = read_user_vectors(first.path("step1"))
    assert set(full.index) == {(1, 5), (2, 4)} and set(step1.index) == {(1, 5)}  # NULL: left out
    assert full.dim == encoder.dim and first.facts["encoded"]["step2"] == 1
    stamp = first.path("full").stat().st_mtime_ns
    again = encode_rationales("student", source, RunFolder(tmp_path / "run"), encoder)
    assert again.key == first.key and again.path("full").stat().st_mtime_ns == stamp


def test_missing_rationale_file_is_a_clear_error(tmp_path):
    from slim_core.errors import DataError
    from slim_core.rationale_vectors import read_rationales

    with pytest.raises(DataError, match="rationale file not found"):
        read_rationales(tmp_path / "nope.parquet")
    pq.write_table(pa.table({"user_idx": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="columns missing: cutoff"):
        read_rationales(tmp_path / "bad.parquet")


def metric_rows(model: str, variant: str, ndcg: float, ranks: list[int]) -> list[dict]:
    return [
        {
            "model": model,
            "variant": variant,
            "seed": 1,
            "split": "test",
            "protocol": protocol,
            "ndcg@10": ndcg,
            "hit@10": ndcg,
            "hit@20": ndcg,
            "mrr": ndcg,
            "ranks": ranks,
        }
        for protocol in ("full", "sampled")
    ]


def test_report_tables_slim_gain_and_history_groups():
    from slim_core.report import history_groups, improvement_table, sparsity_rows

    data = sequences([3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    rows = (
        metric_rows("sasrec", "id", 0.10, [0] * 10)
        + metric_rows("sasrec", "item_text", 0.20, [20] * 10)
        + metric_rows("sasrec", "item_user_text+student", 0.25, [0] * 5 + [20] * 5)
        + metric_rows("sasrec", "item_user_text+teacher", 0.15, [20] * 10)
    )
    table = improvement_table(rows)
    assert (
        "| sasrec | full | item_text | 20.00 | item_user_text+student | 25.00 | +25.0% |" in table
    )
    assert "item_user_text+teacher | 15.00 |" in table
    # The zero-vector control is a model without an LLM: SLIM is measured against it too.
    control = metric_rows("sasrec", "item_user_text+zeros", 0.22, [20] * 10)
    assert "| item_user_text+zeros | 22.00 | item_user_text+student | 25.00 | +13.6% |" in (
        improvement_table(rows + control)
    )
    groups = history_groups(data)
    assert [len(g) for g in groups] == [2] * 5 and groups[0].tolist() == [0, 1]
    labels, series = sparsity_rows(rows, data)
    assert labels[0] == "2-3" and labels[-1] == "10-11"  # items before the test item
    slim = dict(series)["sasrec item_user_text+student"]
    assert slim[:3] == [1.0, 1.0, 0.5] and slim[3:] == [0.0, 0.0]


def test_run_specs_one_run_per_source_and_every_part_for_the_student():
    from slim_core.config import config_from_dict
    from slim_core.errors import ConfigError
    from slim_core.rec.pipeline import run_specs

    values = {
        "data": {"source": {"format": "table", "interactions": "x.csv"}},
        "recommender": {
            "models": ["sasrec"],
            "variants": ["id", "item_user_text"],
            "rationales": ["student", "teacher"],
            "text_matching": True,
            "text_matching_parts": ["full", "step2"],
            "seeds": [1],
            "zero_vector_control": True,
        },
        "teacher": {"model": "m", "cutoffs": ["train", "valid"]},
        "student": {"base_model": "b", "cutoffs": ["train", "valid", "test"]},
    }
    config = config_from_dict(values)
    specs = run_specs(config.recommender, ["student", "teacher", "student:step2"])
    names = [s.name for s in specs]
    assert names == [
        "popularity-id-None",
        "sasrec-id-1",
        "sasrec-item_user_text-student-1",
        "sasrec-item_user_text-teacher-1",
        "sasrec-item_user_text-zeros-1",
        "text_matching-rationale-student-1",
        "text_matching-rationale-teacher-1",
        "text_matching-rationale-student-step2-1",
    ]  # single steps for the student only
    with pytest.raises(ConfigError, match="need rationale vectors"):
        run_specs(config.recommender, [])


@pytest.mark.parametrize("source", ["teacher", "student"])
def test_config_refuses_rationale_rows_that_no_training_target_can_read(source):
    """Asked at the valid cutoff only, a stage's rationales are read by evaluation targets but by
    no training target: the recommenders would be scored on an input they never learnt."""
    from slim_core.config import config_from_dict
    from slim_core.errors import ConfigError

    values = {
        "data": {"source": {"format": "table", "interactions": "x.csv"}},
        "recommender": {"variants": ["id", "item_user_text"], "rationales": [source]},
        "teacher": {"model": "m"},
        "student": {"base_model": "b"},
    }
    config_from_dict(values)  # the defaults include the train cutoff
    values[source]["cutoffs"] = ["valid"]
    with pytest.raises(ConfigError, match=rf"{source}\.cutoffs \['valid'\] has no 'train'"):
        config_from_dict(values)
    # Without a user-side variant or text matching nothing reads them: nothing to refuse.
    values["recommender"]["variants"] = ["id", "item_text"]
    config_from_dict(values)
    values["recommender"]["text_matching"] = True
    with pytest.raises(ConfigError, match="no training target could read"):
        config_from_dict(values)


def test_signal_table_states_each_rationale_row_against_the_controls_in_seed_sigmas():
    from slim_core.report import improvement_table, signal_table

    def seeds(variant: str, values: list[float]) -> list[dict]:
        return [
            row | {"seed": seed}
            for seed, value in enumerate(values, 1)
            for row in metric_rows("sasrec", variant, value, [0])
        ]

    rows = (
        seeds("item_text", [0.20, 0.22])
        + seeds("item_user_text+student", [0.25, 0.27])
        + seeds("item_user_text+zeros", [0.19, 0.21])
        + seeds("item_user_text+history", [0.26, 0.28])
    )
    table = signal_table(rows)
    # std over 2 seeds of (a, a + 0.02) is 0.0141 for every row: pooled the same
    slim = "| sasrec | item_user_text+student | 26.00 ± 1.41 | +5.00 (+3.5 σ) | +6.00 (+4.2 σ) |"
    assert slim + " -1.00 (-0.7 σ) |" in table
    assert len(table.strip().splitlines()) == 3  # the controls and item text are no rows
    # The history control is a model without an LLM too: the best of them is SLIM's bar.
    assert "| sasrec | full | item_user_text+history | 27.00 |" in improvement_table(rows)


def test_config_history_control_needs_the_students_pairs_and_its_train_cutoff():
    from slim_core.config import config_from_dict
    from slim_core.errors import ConfigError

    values = {
        "data": {"source": {"format": "table", "interactions": "x.csv"}},
        "recommender": {"variants": ["id", "item_user_text"], "rationales": ["history"]},
        "teacher": {"model": "m"},
    }
    with pytest.raises(ConfigError, match="no student section to take them from"):
        config_from_dict(values)
    values["student"] = {"base_model": "b", "cutoffs": ["valid", "test"]}
    with pytest.raises(ConfigError, match=r"'history' but student\.cutoffs"):
        config_from_dict(values)
    values["student"]["cutoffs"] = ["train", "valid", "test"]
    assert config_from_dict(values).recommender.rationales == ["history"]


def test_history_groups_never_share_a_length():
    from slim_core.report import history_groups, sparsity_rows

    data = sequences([4, 5, 5, 5, 5, 6, 6, 7, 9, 12])  # test cutoffs 3, 4, 4, 4, 4, 5, ...
    groups = history_groups(data)
    lengths = [sorted({data.cutoff(u, "test") for u in g}) for g in groups]
    assert sum(len(g) for g in groups) == 10
    assert all(a[-1] < b[0] for a, b in zip(lengths, lengths[1:], strict=False))
    labels, _ = sparsity_rows(metric_rows("sasrec", "id", 0.1, [0] * 10), data)
    # the four users of length 4 would have been split over two groups of two
    assert labels == ["3", "4", "5-6", "8-11"] and [len(g) for g in groups] == [1, 4, 3, 2]
