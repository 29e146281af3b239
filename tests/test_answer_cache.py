"""The teacher's answer cache: durable per batch, keyed so that nothing is paid for twice."""

import pytest

from slim_core.teacher.cache import AnswerCache, answer_key


def answer(key, text="Step 1: a\nStep 2: b\nStep 3: c", at="2026-11-27T10:00:00"):
    return {
        "key": key,
        "user_idx": 1,
        "cutoff": 3,
        "model": "m",
        "template_version": "teacher-v1",
        "answer": text,
        "tokens_in": 100,
        "tokens_out": 50,
        "latency_s": 0.2,
        "attempts": 1,
        "created_at": at,
    }


def failure(key, at="2026-11-27T10:00:00", error="HTTP 500"):
    return {
        "key": key,
        "user_idx": 1,
        "cutoff": 3,
        "model": "m",
        "template_version": "teacher-v1",
        "error": error,
        "raw_answer": None,
        "attempts": 3,
        "failed_at": at,
    }


def test_key_changes_with_every_input_and_only_then():
    base = answer_key("gpt", "teacher-v1", "prompt", {"temperature": 0.0, "max_tokens": 256})
    assert base == answer_key(
        "gpt", "teacher-v1", "prompt", {"max_tokens": 256, "temperature": 0.0}
    )
    assert (
        len(
            {
                base,
                answer_key("gpt2", "teacher-v1", "prompt", {"temperature": 0.0, "max_tokens": 256}),
                answer_key("gpt", "teacher-v2", "prompt", {"temperature": 0.0, "max_tokens": 256}),
                answer_key("gpt", "teacher-v1", "prompt!", {"temperature": 0.0, "max_tokens": 256}),
                answer_key("gpt", "teacher-v1", "prompt", {"temperature": 0.7, "max_tokens": 256}),
            }
        )
        == 5
    )


def test_answers_survive_reopening_and_batches_add_up(tmp_path):
    cache = AnswerCache(tmp_path)
    assert cache.answered_keys() == set()
    cache.write_answers([answer("a"), answer("b")])
    cache.write_answers([answer("c")])
    again = AnswerCache(tmp_path)
    assert again.answered_keys() == {"a", "b", "c"}
    assert [row["key"] for row in again.read_answers()] == ["a", "b", "c"]


def test_a_crash_while_writing_a_batch_leaves_earlier_batches_and_no_partial_file(
    tmp_path, monkeypatch
):
    import pyarrow.parquet as pq

    cache = AnswerCache(tmp_path)
    cache.write_answers([answer("a")])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.write_answers([answer("b")])
    monkeypatch.undo()
    assert cache.answered_keys() == {"a"}
    assert sorted(p.suffix for p in (tmp_path / "answers").iterdir()) == [".parquet"]


def test_dead_letters_are_failures_without_a_later_answer(tmp_path):
    cache = AnswerCache(tmp_path)
    cache.write_failures([failure("a", error="HTTP 429"), failure("b")])
    cache.write_failures([failure("a", at="2026-11-27T11:00:00", error="timeout")])
    letters = {row["key"]: row["error"] for row in cache.dead_letters()}
    assert letters == {"a": "timeout", "b": "HTTP 500"}  # the latest failure of each
    cache.write_answers([answer("a")])  # a replay answered it
    assert [row["key"] for row in cache.dead_letters()] == ["b"]


def test_one_cache_serves_many_threads_at_once(tmp_path):
    """The teacher's two batch threads read one cache: no call may find DuckDB busy."""
    from concurrent.futures import ThreadPoolExecutor

    cache = AnswerCache(tmp_path)
    cache.write_answers([answer(f"k{n}") for n in range(20)])
    cache.write_failures([failure("f1")])

    def read(n: int) -> int:
        keys = cache.answered_keys() | cache.failed_keys()
        return len(keys) + len(cache.read_answers()) + len(cache.dead_letters())

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(read, range(100))) == {21 + 20 + 1}
