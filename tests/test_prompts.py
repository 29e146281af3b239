"""Prompt templates: history before the cutoff only, budgets, and parsing the three steps."""

import random

import pytest

from slim_core.prompts import (
    STUDENT_VERSION,
    TEACHER_VERSION,
    build_prompt,
    describe_item,
    parse_rationale,
)

ITEMS = {
    i: {
        "item_id": f"A{i}",
        "title": f"Widget number {i}",
        "category": "Lab > Glassware",
        "brand": f"Brand{i % 3}",
    }
    for i in range(1, 61)
}


def test_no_prompt_contains_its_own_target():
    rng = random.Random(0)
    for user in range(200):
        sequence = rng.sample(range(1, 61), rng.randint(3, 40))
        for cutoff in range(1, len(sequence)):
            for version in (TEACHER_VERSION, STUDENT_VERSION):
                prompt = build_prompt(user, sequence, cutoff, ITEMS, version=version, max_items=15)
                target = sequence[cutoff]
                assert target not in prompt.history_items(sequence)
                assert f"Widget number {target} " not in prompt.text
                assert prompt.history_items(sequence) == tuple(
                    sequence[max(0, cutoff - 15) : cutoff]
                )


def test_history_is_newest_items_within_budget():
    sequence = list(range(1, 31))
    prompt = build_prompt(7, sequence, 30, ITEMS, max_items=20)
    assert prompt.history_items(sequence) == tuple(range(11, 31))
    budgeted = build_prompt(7, sequence, 30, ITEMS, max_items=20, token_budget=40)
    assert budgeted.history_items(sequence) == tuple(range(31 - budgeted.shown, 31))
    assert budgeted.shown < 20
    history = budgeted.text.split("oldest first:\n", 1)[1].split("\n\n", 1)[0]
    assert len(history.split()) <= 40
    assert (prompt.user_idx, prompt.cutoff, prompt.version) == (7, 30, TEACHER_VERSION)


def test_item_description_uses_known_fields():
    assert (
        describe_item({"title": "Flask", "category": "Lab", "brand": None})
        == "Flask (category: Lab)"
    )
    assert describe_item({"item_id": "B01", "title": None}) == "item B01"
    long = {
        "title": " ".join(f"t{n}" for n in range(30)),
        "category": "Industrial & Scientific Lab Products Lab Instruments Pumps Accessories",
        "brand": "Aketek",
    }
    assert describe_item(long) == (
        "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11 ... "
        "(category: ... Lab Products Lab Instruments Pumps Accessories; brand: Aketek)"
    )


def test_domain_words_and_versions():
    """The default domain keeps the template versions (and so the cached answers) unchanged;
    another domain's prompts speak its words and carry their own versions."""
    sequence = [1, 2, 3, 4]
    products = build_prompt(1, sequence, 3, ITEMS, version=TEACHER_VERSION)
    movies = build_prompt(1, sequence, 3, ITEMS, version=TEACHER_VERSION, domain="movies")
    assert products.version == TEACHER_VERSION and movies.version == f"{TEACHER_VERSION}-movies"
    assert "customer's purchase history" in products.text and "brands" in products.text
    assert "viewer's watch history" in movies.text
    assert "Recommend genres that fit" in movies.text and "specific movies" in movies.text
    assert "(genres: ... Lab > Glassware" not in movies.text  # 3 words fit: no ellipsis
    assert "(genres: Lab > Glassware; brand: Brand1)" in movies.text
    assert "customer" not in movies.text and "product" not in movies.text
    student = build_prompt(1, sequence, 3, ITEMS, version=STUDENT_VERSION, domain="movies")
    assert student.version == f"{STUDENT_VERSION}-movies"
    assert student.text.startswith("Watch history, oldest first:\n1. Widget number 1")
    assert student.text.endswith("Step 2: fitting genres. Step 3: specific movies.\n")
    assert student.history_items(sequence) == products.history_items(sequence) == (1, 2, 3)
    with pytest.raises(ValueError, match="unknown prompt domain 'books'"):
        build_prompt(1, sequence, 3, ITEMS, domain="books")


def test_cutoff_must_leave_history():
    with pytest.raises(ValueError, match="cutoff 0"):
        build_prompt(1, [1, 2, 3], 0, ITEMS)


@pytest.mark.parametrize(
    "answer",
    [
        "Step 1: likes glass.\nStep 2: Lab > Glassware, Brand1.\nStep 3: Widget 9, because...",
        "**Step 1:** likes glass.\n**Step 2:** glassware\n**Step 3:** Widget 9",
        "1. likes glass\n2) glassware\n3 - Widget 9",
    ],
)
def test_parse_three_steps(answer):
    steps = parse_rationale(answer)
    assert steps is not None and "glass" in steps[0] and "9" in steps[2]


@pytest.mark.parametrize(
    "answer",
    [
        "Step 1: likes glass.\nStep 2: glassware",
        "",
        "The user likes glass.",
        "Step 1:\nStep 2: x\nStep 3: y",
    ],
)
def test_malformed_answers_are_rejected(answer):
    assert parse_rationale(answer) is None


def test_numbered_list_inside_a_step_stays_in_it():
    answer = "Step 1: glass.\nStep 2: glassware.\nStep 3: Try these:\n1. Widget 9\n2. Widget 12"
    assert parse_rationale(answer)[2] == "Try these:\n1. Widget 9\n2. Widget 12"


def test_a_header_written_twice_counts_once_and_a_fourth_step_ends_the_third():
    answer = "Step 1: glass\nStep 2: Pyrex\nStep 3:\nStep 3: a beaker\nStep 4: and more"
    assert parse_rationale(answer) == ("glass", "Pyrex", "a beaker")


def test_data_domain_reaches_teacher_and_student_prompts_without_recomputing_data(tmp_path):
    import yaml

    from slim_core.config import StudentConfig, load_config
    from slim_core.data import prepare_data
    from slim_core.data.stage import data_stage_key
    from slim_core.student.inference import student_prompts
    from slim_core.teacher.stage import teacher_prompts
    from tests.helpers import demo_config

    path = demo_config(tmp_path, domain="movies")
    values = yaml.safe_load(path.read_text())
    values["teacher"] = {"model": "unused", "users": 5}
    path.write_text(yaml.safe_dump(values))
    movies = load_config(path)
    (tmp_path / "p").mkdir()
    products = load_config(demo_config(tmp_path / "p"))
    assert data_stage_key(movies.data) == data_stage_key(products.data)  # only prompts change
    data = prepare_data(movies)
    teacher = teacher_prompts(movies, data)
    assert len(teacher) == 5 * 2  # train and valid cutoffs
    assert {p.version for p in teacher} == {f"{TEACHER_VERSION}-movies"}
    assert all("viewer's watch history" in p.text for p in teacher)
    student = student_prompts(StudentConfig(base_model="unused", users=3), data, movies.data.domain)
    assert {p.version for _, p in student} == {f"{STUDENT_VERSION}-movies"}


def test_teacher_v3_asks_for_items_outside_the_history_and_keys_its_answers_apart(tmp_path):
    """teacher.prompt_version: teacher-v3 changes step 3 only, and its prompts carry their own
    version (answers are cached by it, so v2's answers are never served for a v3 prompt)."""
    import yaml

    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.teacher.stage import teacher_prompts
    from tests.helpers import demo_config

    path = demo_config(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["teacher"] = {"model": "unused", "users": 3, "prompt_version": "teacher-v3"}
    path.write_text(yaml.safe_dump(values))
    config = load_config(path)
    v3 = teacher_prompts(config, prepare_data(config))
    v2 = teacher_prompts(
        config.model_copy(
            update={"teacher": config.teacher.model_copy(update={"prompt_version": "teacher-v2"})}
        ),
        prepare_data(config),
    )
    assert {p.version for p in v3} == {"teacher-v3"} and {p.version for p in v2} == {"teacher-v2"}
    for new, old in zip(v3, v2, strict=True):
        assert "that are not in the history, and say why" in new.text
        assert new.text.replace(" that are not in the history", "") == old.text


def test_a_header_begun_and_not_finished_is_not_step_text():
    """A small student sometimes writes "Step" or "Step 2" alone on a line, then the header."""
    answer = "Step 1: likes rods.\nStep 2\nStep 2: rods, Small Parts\nStep\nStep 3: Rod 6061"
    assert parse_rationale(answer) == ("likes rods.", "rods, Small Parts", "Rod 6061")
    # The word inside a sentence stays.
    answer = "Step 1: the next step\nStep 2: glassware\nStep 3: Widget 9"
    assert parse_rationale(answer) == ("the next step", "glassware", "Widget 9")


def test_train_cutoff_lead_reaches_teacher_and_student_train_prompts_only(tmp_path):
    import yaml

    from slim_core.config import StudentConfig, load_config
    from slim_core.data import prepare_data
    from slim_core.rec.data import load_sequence_data
    from slim_core.student.inference import student_prompts
    from slim_core.teacher.stage import teacher_prompts
    from tests.helpers import demo_config

    path = demo_config(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["teacher"] = {"model": "unused", "users": 5, "train_cutoff_lead": 2}
    path.write_text(yaml.safe_dump(values))
    config = load_config(path)
    data = prepare_data(config)
    sequences = load_sequence_data(data.folder)
    row_of = {int(u): row for row, u in enumerate(sequences.user_idx)}

    def expected(user: int, split: str) -> int:
        n = len(sequences.sequences[row_of[user]])
        return {"train": max(min(1, n - 3), n - 5), "valid": n - 2, "test": n - 1}[split]

    teacher = teacher_prompts(config, data)
    by_user: dict[int, list[int]] = {}
    for prompt in teacher:
        by_user.setdefault(prompt.user_idx, []).append(prompt.cutoff)
    for user, cutoffs in by_user.items():
        assert sorted(cutoffs) == [expected(user, "train"), expected(user, "valid")]
    student = student_prompts(
        StudentConfig(base_model="unused", users=4, train_cutoff_lead=2), data
    )
    assert student and all(p.cutoff == expected(p.user_idx, split) for split, p in student)
    assert any(
        split == "train" and p.cutoff < expected(p.user_idx, "valid") - 1 for split, p in student
    )
