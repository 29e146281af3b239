"""Teacher runs against the fault-injecting loopback server: nothing lost, nothing paid twice."""

import pyarrow.parquet as pq
import pytest

from slim_core.llm import Decoding
from slim_core.llm.openai_http import OpenAICompatibleBackend
from slim_core.prompts import Prompt
from slim_core.teacher.cache import AnswerCache
from slim_core.teacher.run import Prices, ask_teacher
from tests.fake_openai import GOOD_ANSWER

PROMPTS = [
    Prompt(
        user_idx=n,
        cutoff=5,
        version="teacher-v2",
        text=f"history of user {n}",
        shown=2,
    )
    for n in range(40)
]


@pytest.fixture
def server(fake_openai):
    return fake_openai


def teacher(server, **overrides):
    settings = {"timeout_s": 1.5, "max_retries": 2, "backoff_s": 0.01, "max_concurrency": 8}
    return OpenAICompatibleBackend(
        base_url=server.url, model="t", api_key_env=None, **{**settings, **overrides}
    )


FAULT_MIXES = {
    "clean": {},
    "rate_limited": {p.text: ["429"] for p in PROMPTS[::2]},
    "server_errors": {p.text: ["500", "500"] for p in PROMPTS[::3]},
    "timeouts_and_drops": {p.text: ["slow" if p.user_idx % 2 else "drop"] for p in PROMPTS[::4]},
    "malformed": {p.text: ["malformed", "bad_steps"] for p in PROMPTS[::5]},
    "hopeless": {p.text: ["500"] * 20 for p in PROMPTS[:3]}
    | {p.text: ["bad_steps"] * 20 for p in PROMPTS[3:5]},
}


@pytest.mark.parametrize("mix", FAULT_MIXES)
def test_every_prompt_ends_answered_or_dead_lettered(server, tmp_path, mix):
    server.reset(FAULT_MIXES[mix])
    cache = AnswerCache(tmp_path)
    report = ask_teacher(
        PROMPTS, teacher(server), cache, Decoding(max_tokens=64), batch_size=8, malformed_retries=1
    )
    answered = {row["user_idx"] for row in cache.read_answers()}
    dead = {row["user_idx"] for row in cache.dead_letters()}
    assert answered | dead == set(range(40)) and not answered & dead  # none lost
    assert server.after_answer == 0  # none sent again after it was answered
    assert report.answered == len(answered) and report.failed == len(dead)
    if mix == "hopeless":
        assert dead == {0, 1, 2, 3, 4}
        raw = {row["user_idx"]: row["raw_answer"] for row in cache.dead_letters()}
        assert "likes things" in raw[3]  # a malformed answer keeps its raw text
    else:
        assert dead == set()


def test_a_killed_run_resumes_without_paying_twice(server, tmp_path, monkeypatch):
    server.reset()
    cache = AnswerCache(tmp_path)
    written = []
    original = cache.write_answers

    def write_then_die(rows):
        original(rows)
        written.append(len(rows))
        if len(written) == 2:
            raise KeyboardInterrupt("killed after two batches")

    monkeypatch.setattr(cache, "write_answers", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        ask_teacher(PROMPTS, teacher(server), cache, Decoding(max_tokens=64), batch_size=8)
    monkeypatch.undo()
    assert len(cache.answered_keys()) == 16
    first_calls = server.settled_calls()
    # The HTTP client streams: while a batch is written the next requests run. The kill cancels
    # them instead of letting the rest finish: at most 2 x `max_concurrency` = 16 ran ahead.
    assert first_calls <= 16 + 2 * 8
    answered_before_rerun = set(server.answered)
    report = ask_teacher(
        PROMPTS, teacher(server), AnswerCache(tmp_path), Decoding(max_tokens=64), batch_size=8
    )
    assert report.cached == 16 and report.answered == 24
    assert sum(server.calls.values()) - first_calls == 24  # only the unanswered ones were asked
    # Asked again after the server had answered them: only those in flight at the kill, whose
    # replies the killed client never received.
    assert server.after_answer == len(answered_before_rerun) - 16 <= 2 * 8
    # A third run asks nothing at all.
    again = ask_teacher(
        PROMPTS, teacher(server), AnswerCache(tmp_path), Decoding(max_tokens=64), batch_size=8
    )
    assert again.cached == 40 and again.calls == 0


def test_budget_stops_cleanly_before_it_would_be_exceeded(server, tmp_path):
    server.reset()
    prices = Prices(input_per_1k=1.0, output_per_1k=1.0)
    # A batch of 8 is estimated at 8 * (2 * 4 words in + 64 max out) / 1000 = $0.576; the first
    # really costs 8 * (4 + 16) / 1000 = $0.16, so a second would pass $0.70 by the estimate.
    report = ask_teacher(
        PROMPTS,
        teacher(server),
        AnswerCache(tmp_path),
        Decoding(max_tokens=64),
        batch_size=8,
        prices=prices,
        budget_usd=0.7,
    )
    assert report.stopped_by_budget
    assert report.answered == 8 and report.cost_usd == pytest.approx(0.16)
    assert (
        report.tokens_in == 32
        and report.tokens_out == 128
        and report.latency_percentiles()["p50"] >= 0
    )


KILLED_RUN = """
import sys
from slim_core.llm import Decoding
from slim_core.llm.openai_http import OpenAICompatibleBackend
from slim_core.prompts import Prompt
from slim_core.teacher.cache import AnswerCache
from slim_core.teacher.run import ask_teacher

url, folder = sys.argv[1], sys.argv[2]
prompts = [Prompt(n, 5, "teacher-v2", f"history of user {n}", 2) for n in range(40)]
backend = OpenAICompatibleBackend(base_url=url, model="t", api_key_env=None, max_concurrency=4)
ask_teacher(prompts, backend, AnswerCache(folder), Decoding(max_tokens=64), batch_size=4)
"""


def test_a_run_killed_with_sigkill_loses_at_most_the_batch_in_flight(server, tmp_path):
    """A real process, killed with SIGKILL mid-run; the rerun pays only for what is missing."""
    import sys

    from tests.helpers import spawned, wait_until

    server.reset(latency_s=0.15)
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    cache = AnswerCache(tmp_path / "cache")
    with spawned([sys.executable, str(script), server.url, str(cache.folder)]) as child:
        wait_until(lambda: len(cache.answered_keys()) >= 12, 60, child, interval=0.05)
    saved = len(cache.answered_keys())
    assert 12 <= saved < 40, "the kill should land mid-run"
    # A kill during a write leaves at most a hidden temporary file, never a partial Parquet one.
    for file in cache.answers.glob("*.parquet"):
        assert pq.read_table(file).num_rows == 4

    server.latency_s = 0.0
    report = ask_teacher(PROMPTS, teacher(server), cache, Decoding(max_tokens=64), batch_size=8)
    assert report.cached == saved and report.answered == 40 - saved
    assert len(cache.answered_keys()) == 40
    assert server.after_answer <= 4  # only the batch in flight at the kill is asked again


def test_streamed_answers_are_written_batch_by_batch(server, tmp_path):
    """The HTTP client gets every prompt at once, yet answers land `batch_size` per file, as
    they arrive: a kill loses at most one batch of answers, as with batch-by-batch calls."""
    server.reset(latency_s=0.01)
    cache = AnswerCache(tmp_path)
    report = ask_teacher(PROMPTS, teacher(server), cache, Decoding(max_tokens=64), batch_size=16)
    files = sorted(cache.answers.glob("*.parquet"))
    assert sorted(pq.read_metadata(f).num_rows for f in files) == [8, 16, 16]
    assert report.answered == 40 and len(cache.answered_keys()) == 40
    assert all(calls == 1 for calls in server.calls.values())


def test_the_budget_bounds_the_spend_of_every_run_until_reset(server, tmp_path):
    """Three runs with budget_usd 0.005 spent $0.0131: the budget was per run."""
    server.reset()
    cache = AnswerCache(tmp_path)
    prices = Prices(input_per_1k=1.0, output_per_1k=1.0)

    def run(prompts):
        return ask_teacher(
            prompts, teacher(server), cache, Decoding(max_tokens=64), batch_size=8,
            prices=prices, budget_usd=0.7,
        )  # fmt: skip

    first = run(PROMPTS[:8])  # $0.16 spent; a batch is estimated at $0.576
    assert first.answered == 8 and cache.spent_usd() == pytest.approx(0.16)
    second = run(PROMPTS[8:16])  # another run: 0.16 + 0.576 would pass 0.7
    assert second.stopped_by_budget and second.answered == 0
    assert server.settled_calls() == 8
    assert cache.reset_budget() == pytest.approx(0.16) and cache.spent_usd() == 0
    third = run(PROMPTS[8:16])
    assert third.answered == 8 and cache.spent_usd() == pytest.approx(0.16)


def test_replies_without_usage_and_billed_failures_are_charged(server, tmp_path, caplog):
    """A reply without `usage` counted as $0, and so did a timeout after the request was sent;
    both are now charged by an estimate, with a warning, and recorded in the ledger."""
    from slim_core.teacher.run import estimated_tokens

    server.reset({"p0": ["nousage"], "p1": ["slow"] * 5})
    cache = AnswerCache(tmp_path)
    prompts = [Prompt(n, 5, "teacher-v2", f"p{n}", 2) for n in range(2)]
    prices = Prices(input_per_1k=1.0, output_per_1k=1.0)
    with caplog.at_level("WARNING", logger="slim_core.teacher"):
        report = ask_teacher(
            prompts, teacher(server, timeout_s=0.5, max_retries=0), cache,
            Decoding(max_tokens=64), batch_size=8, prices=prices,
        )  # fmt: skip
    assert report.answered == 1 and report.failed == 1 and report.estimated_calls == 2
    answer_cost = (estimated_tokens("p0") + estimated_tokens(GOOD_ANSWER)) / 1000
    failure_cost = (estimated_tokens("p1") + 64) / 1000
    assert report.cost_usd == pytest.approx(answer_cost + failure_cost)
    assert cache.spent_usd() == pytest.approx(answer_cost + failure_cost)
    [answer] = cache.read_answers()
    [failure] = cache.dead_letters()
    assert answer["cost_estimated"] and failure["cost_estimated"]
    assert "charged by an estimate" in caplog.text


def test_a_refused_key_mid_batch_keeps_what_was_paid_for_under_a_budget(server, tmp_path):
    """With a budget, batches go one at a time; a refusal in the middle of one still writes
    (and counts) the answers that came before it."""
    from slim_core.llm.openai_http import AuthenticationError

    server.reset({PROMPTS[6].text: ["401"]})
    cache = AnswerCache(tmp_path)
    with pytest.raises(AuthenticationError):
        ask_teacher(
            PROMPTS[:8], teacher(server, max_concurrency=1), cache, Decoding(max_tokens=64),
            batch_size=8, prices=Prices(input_per_1k=1.0, output_per_1k=1.0), budget_usd=100.0,
        )  # fmt: skip
    assert cache.answered_keys() and len(cache.answered_keys()) == 6
    assert cache.spent_usd() == pytest.approx(6 * (4 + len(GOOD_ANSWER.split())) / 1000)


def test_the_stop_handler_leaves_an_ignored_signal_ignored():
    """Under `nohup` (SIGINT ignored) a Ctrl-C must not stop the requests of a running stage."""
    import signal

    from slim_core.runtime import Runtime
    from tasks.teacher import stop_requests_on_signal

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_requests_on_signal(Runtime()):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
