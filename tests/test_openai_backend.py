"""The OpenAI-compatible backend against a real loopback server with injected faults."""

import pytest

from slim_core.errors import ConfigError
from slim_core.llm import Decoding, Generation, GenerationFailure
from slim_core.llm.openai_http import OpenAICompatibleBackend
from tests.fake_openai import GOOD_ANSWER

SECRET = "sk-test-secret-key-123456"


@pytest.fixture
def server(fake_openai, monkeypatch):
    fake_openai.reset()
    monkeypatch.setenv("SLIM_TEST_KEY", SECRET)
    return fake_openai


def backend(server, **overrides):
    settings = {
        "base_url": server.url,
        "model": "teacher-test",
        "api_key_env": "SLIM_TEST_KEY",
        "max_concurrency": 8,
        "timeout_s": 1.5,
        "max_retries": 3,
        "backoff_s": 0.01,
    }
    return OpenAICompatibleBackend(**{**settings, **overrides})


def test_answers_every_prompt_in_order(server):
    prompts = [f"prompt {n}" for n in range(20)]
    results = backend(server).generate(prompts, Decoding(max_tokens=64))
    assert all(isinstance(r, Generation) and r.text == GOOD_ANSWER for r in results)
    assert results[3].tokens_in == 2 and results[3].tokens_out == len(GOOD_ANSWER.split())
    assert set(server.authorizations) == {f"Bearer {SECRET}"}


def test_high_concurrency_keeps_its_connections_and_its_limit(server):
    """Concurrency 40 runs on 40 one-connection clients: connections are
    kept alive and reused, and no more than 40 requests are ever in flight."""
    server.reset(latency_s=0.05)
    prompts = [f"prompt {n}" for n in range(160)]
    results = backend(server, max_concurrency=40).generate(prompts, Decoding(max_tokens=64))
    assert all(isinstance(r, Generation) for r in results)
    assert all(server.calls[p] == 1 for p in prompts)
    assert 16 < server.peak_in_flight <= 40  # many clients at once, never more than the bound
    assert len(server.connections) <= 40  # connections reused, not reopened per request


def test_connections_outlive_a_batch_and_close_ends_them(server):
    """Batches reuse the connections of the batches before them (a new event loop per batch
    reopened them all), also when called from inside a running event loop; `close` ends them
    and a later batch opens new ones. A pickled copy starts afresh."""
    import asyncio
    import pickle

    server.reset(latency_s=0.02)
    teacher = backend(server, max_concurrency=6)
    for batch in range(3):
        results = teacher.generate([f"b{batch} p{n}" for n in range(12)], Decoding())
        assert all(isinstance(r, Generation) for r in results)

    async def inside_a_loop():
        return teacher.generate(["from a loop"], Decoding())

    assert isinstance(asyncio.run(inside_a_loop())[0], Generation)
    assert len(server.connections) <= 6
    copy = pickle.loads(pickle.dumps(teacher))
    assert isinstance(copy.generate(["copied"], Decoding())[0], Generation)
    copy.close()
    loop_thread = teacher._runner.thread
    teacher.close()
    assert not loop_thread.is_alive()
    before = set(server.connections)
    assert isinstance(teacher.generate(["after close"], Decoding())[0], Generation)
    assert set(server.connections) - before  # a new connection
    teacher.close()


@pytest.mark.parametrize("fault", ["429", "500", "slow", "drop", "malformed"])
def test_transient_faults_are_retried_until_answered(server, fault):
    server.reset({"p0": [fault, fault], "p1": [fault]})
    results = backend(server).generate(["p0", "p1", "p2"], Decoding())
    assert [type(r) for r in results] == [Generation] * 3
    assert [r.attempts for r in results] == [3, 2, 1]
    assert server.after_answer == 0  # nothing asked again once answered


def test_persistent_faults_end_as_failures_with_attempts(server):
    server.reset({"p0": ["500"] * 10, "p1": ["429"] * 10})
    results = backend(server, max_retries=2).generate(["p0", "p1", "p2"], Decoding())
    assert isinstance(results[0], GenerationFailure) and "HTTP 500" in results[0].error
    assert results[0].attempts == 3 and server.calls["p0"] == 3
    assert isinstance(results[1], GenerationFailure) and "HTTP 429" in results[1].error
    assert isinstance(results[2], Generation)


def test_client_errors_are_not_retried(server):
    server.reset({"p0": ["400"]})
    results = backend(server).generate(["p0"], Decoding())
    assert isinstance(results[0], GenerationFailure) and results[0].attempts == 1
    assert "HTTP 400" in results[0].error and server.calls["p0"] == 1
    wrong_path = backend(server, base_url=server.url + "/nowhere").generate(["p1"], Decoding())
    assert isinstance(wrong_path[0], GenerationFailure) and "HTTP 404" in wrong_path[0].error


def test_missing_api_key_is_a_config_error_without_the_key(server, monkeypatch):
    monkeypatch.delenv("SLIM_TEST_KEY")
    with pytest.raises(ConfigError, match="SLIM_TEST_KEY"):
        backend(server).generate(["p0"], Decoding())


def test_the_key_never_appears_in_failures(server):
    server.reset({"p0": ["500"] * 10})
    results = backend(server, max_retries=1).generate(["p0"], Decoding())
    assert SECRET not in repr(results)
