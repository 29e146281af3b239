"""The teacher flows on a real Prefect server against the fault-injecting OpenAI-compatible server."""

import json
import os
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.fake_openai import FakeOpenAI
from tests.helpers import (
    demo_config,
    flow_run_artifact,
    group_alive,
    spawned,
    task_states,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("prefect_server")
SECRET = "sk-never-log-me-0123456789"
SLIM_TEACHER = [str(Path(sys.executable).parent / "slim"), "teacher", "run", "-c"]


@pytest.fixture
def fake(fake_openai):
    return fake_openai


def teacher_config(tmp_path: Path, fake: FakeOpenAI) -> Path:
    path = demo_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["teacher"] = {
        "backend": "openai",
        "model": "teacher-test",
        "base_url": fake.url,
        "api_key_env": "SLIM_TEST_TEACHER_KEY",
        "users": 20,
        "cutoffs": ["valid"],  # one prompt per user keeps the counts below readable
        "batch_size": 8,
        "timeout_s": 1.5,
        "max_retries": 1,
        "malformed_retries": 1,
        "price_input_per_1k": 0.0015,
        "price_output_per_1k": 0.002,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_teacher_run_dead_letters_and_replay(tmp_path, fake, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.pipeline import retry_failed_flow, teacher_flow
    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.teacher.stage import teacher_prompts

    monkeypatch.setenv("SLIM_TEST_TEACHER_KEY", SECRET)
    path = teacher_config(tmp_path, fake)
    config = load_config(path)
    prompts = teacher_prompts(config, prepare_data(config))
    assert len(prompts) == 20
    hopeless = [p.text for p in prompts[:3]]
    # a careless endpoint quotes the request's Authorization header in its error body
    fake.reset({text: ["echo500"] * 50 for text in hopeless} | {prompts[5].text: ["429"]})

    first = teacher_flow(str(path), return_state=True)
    result = first.result()["teacher"]
    assert result.summary["answered"] == 17 and result.summary["dead_letters"] == 3
    assert task_states(first).count("Completed") == len(
        task_states(first)
    )  # 3 batches + data + write
    rationales = duckdb.sql(
        f"SELECT user_idx, cutoff, step1, step3 FROM '{result.rationales}'"
    ).fetchall()
    assert len(rationales) == 17 and all(step1 and step3 for _, _, step1, step3 in rationales)
    assert fake.after_answer == 0

    fake.reset()  # the endpoint recovers
    replay = retry_failed_flow(str(path), return_state=True).result()
    assert replay["replayed"] == 3
    assert sorted(fake.calls) == sorted(hopeless)  # exactly the dead letters, nothing paid twice
    assert (
        replay["teacher"].summary["answered"] == 20
        and replay["teacher"].summary["dead_letters"] == 0
    )

    again = teacher_flow(str(path)).get("teacher")
    assert again.summary["cached"] == 20 and again.summary["calls"] == 0

    # The API key appears in no file the run wrote and in no log or artifact on the server.
    for folder in (Path(config.run.output_dir), Path(os.environ["PREFECT_HOME"])):
        for file in folder.rglob("*"):
            if file.is_file():
                assert SECRET.encode() not in file.read_bytes(), file
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[first.state_details.flow_run_id])
            )
        )
    assert logs and not any(SECRET in log.message for log in logs)
    summary = flow_run_artifact(first.state_details.flow_run_id, "teacher-summary")
    assert "cost (USD)" in summary and SECRET not in summary


def test_api_key_from_a_prefect_secret_block(tmp_path, fake, monkeypatch):
    from prefect.blocks.system import Secret

    from flows.pipeline import teacher_flow
    from tasks.teacher import make_teacher_backend

    block_secret = "sk-from-a-secret-block-42"
    Secret(value=block_secret).save("slim-test-teacher-key", overwrite=True)
    path = teacher_config(tmp_path, fake)
    config = yaml.safe_load(path.read_text())
    config["teacher"] |= {"api_key_block": "slim-test-teacher-key", "users": 4}
    path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("SLIM_TEST_TEACHER_KEY", raising=False)  # the block alone must suffice
    fake.reset()

    result = teacher_flow(str(path))["teacher"]
    assert result.summary["answered"] == 4
    assert fake.authorizations and set(fake.authorizations) == {f"Bearer {block_secret}"}
    assert block_secret not in repr(make_teacher_backend(resolved_teacher(path)))
    for file in Path(config["run"]["output_dir"]).rglob("*"):
        if file.is_file():
            assert block_secret.encode() not in file.read_bytes(), file

    config["teacher"]["api_key_block"] = "no-such-block"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="no Prefect Secret block named 'no-such-block'"):
        teacher_flow(str(path))


def resolved_teacher(path: Path):
    from slim_core.config import load_config
    from slim_core.teacher.stage import teacher_config as resolved

    return resolved(load_config(path))


def test_killed_teacher_flow_then_retry_failed_empties_the_dead_letters(
    tmp_path, fake, monkeypatch
):
    """`slim teacher run` in a real process, killed with SIGKILL mid-flow after a batch left two
    dead letters; `retry-failed` replays exactly those, a rerun finishes the rest, and no prompt
    is paid for twice beyond one batch of unwritten answers and the requests in flight."""
    from flows.pipeline import retry_failed_flow, teacher_flow
    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.teacher.stage import answer_cache, teacher_prompts

    monkeypatch.setenv("SLIM_TEST_TEACHER_KEY", SECRET)
    path = teacher_config(tmp_path, fake)
    config = load_config(path)
    prompts = teacher_prompts(config, prepare_data(config))
    hopeless = [p.text for p in prompts[:2]]  # both in the first batch of 8
    fake.reset({text: ["500"] * 50 for text in hopeless}, latency_s=1.0)
    cache = answer_cache(config)
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the child runs its own temporary server,
    env["PREFECT_HOME"] = str(tmp_path / "child-prefect")  # on a database of its own
    child_log = tmp_path / "child.log"
    with spawned(SLIM_TEACHER + [str(path)], env=env, log=child_log) as child:
        # HTTP batches run two at a time and write in halves: wait for the first batch's dead
        # letters (its two hopeless prompts fail after their retries) and six answers; the
        # child (and its temporary server) is killed with SIGKILL on the way out.
        wait_until(
            lambda: len(cache.answered_keys()) >= 6 and len(cache.dead_letters()) >= 2,
            180,
            child,
            interval=0.05,
        )
    answered = len(cache.answered_keys())
    assert 6 <= answered < 18, (
        "the kill should land after the first batch, mid-flow; the child's output ends with:\n"
        + child_log.read_text()[-3000:]
    )
    assert {row["key"] for row in cache.dead_letters()} and len(cache.dead_letters()) == 2

    with fake.lock:  # the endpoint recovers; its memory of what it answered stays
        fake.plan.clear()
        fake.latency_s = 0.0
    replay = retry_failed_flow(str(path))
    assert replay["replayed"] == 2 and cache.dead_letters() == []
    final = teacher_flow(str(path))["teacher"]
    assert final.summary["answered"] == 20 and final.summary["dead_letters"] == 0
    # Asked again: at most one batch of answers not yet written (a half of each of the two
    # running batches: 2 x 3) and the requests in flight at the kill (max_concurrency 8).
    assert fake.after_answer <= 6 + 8


def test_http_batches_overlap_and_write_in_halves(tmp_path, fake, monkeypatch):
    """Two HTTP batch tasks run at once: the next batch's requests start while the previous
    batch still waits for its last answers, and each batch writes its answers in halves (a
    kill loses at most one batch). Every prompt is asked exactly once."""
    import pyarrow.parquet as pq

    from flows.pipeline import teacher_flow
    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.teacher.stage import answer_cache, teacher_prompts

    monkeypatch.setenv("SLIM_TEST_TEACHER_KEY", SECRET)
    path = teacher_config(tmp_path, fake)
    values = yaml.safe_load(path.read_text())
    # 6 prompts on 4 connections: the second round of a batch leaves 2 connections free
    values["teacher"].update(batch_size=6, max_concurrency=4)
    path.write_text(yaml.safe_dump(values))
    config = load_config(path)
    prompts = [p.text for p in teacher_prompts(config, prepare_data(config))]
    latency = 1.0
    fake.reset(latency_s=latency)

    result = teacher_flow(str(path)).get("teacher")
    assert result.summary["answered"] == 20 and all(fake.calls[p] == 1 for p in prompts)
    sent = {prompt: at for at, prompt in fake.arrivals}
    first, second = prompts[:6], prompts[6:12]
    # Sequential batches would send batch 2 only after batch 1's last answer came back; here
    # it takes the connections batch 1's second round leaves free.
    assert min(sent[p] for p in second) < max(sent[p] for p in first) + latency / 2
    files = list(answer_cache(config).answers.glob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 20
    assert max(pq.read_metadata(f).num_rows for f in files) <= 3


def test_sigterm_stops_the_command_and_its_temporary_prefect_server(tmp_path, fake, monkeypatch):
    """A scheduler stops `slim` with SIGTERM to the command alone: the command ends, takes the
    temporary Prefect server it started with it (no process of its group is left), and what
    was answered stays cached."""
    import signal

    from slim_core.config import load_config
    from slim_core.teacher.stage import answer_cache

    monkeypatch.setenv("SLIM_TEST_TEACHER_KEY", SECRET)
    path = teacher_config(tmp_path, fake)
    fake.reset(latency_s=1.0)
    cache = answer_cache(load_config(path))
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the command starts its own temporary server
    env["PREFECT_HOME"] = str(tmp_path / "child-prefect")
    child_log = tmp_path / "child.log"
    with spawned(SLIM_TEACHER + [str(path)], env=env, log=child_log) as child:
        assert wait_until(cache.answered_keys, 180, child), child_log.read_text()[-3000:]
        os.kill(child.pid, signal.SIGTERM)  # the command only, as a scheduler does
        assert child.wait(timeout=60) != 0
        assert wait_until(lambda: not group_alive(child.pid), 30, interval=0.2), (
            "the temporary Prefect server outlived the command:\n" + child_log.read_text()[-3000:]
        )
    assert len(cache.answered_keys()) >= 1


def _slim_teacher(tmp_path: Path, path: Path, env: dict[str, str]):
    """`slim teacher run` as a user runs it, on the session's Prefect server."""
    import subprocess

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "child-prefect"), **env}
    return subprocess.run(
        SLIM_TEACHER + [str(path)], env=env, capture_output=True, text=True, timeout=300
    )


def test_a_missing_key_fails_at_once_and_is_never_retried(tmp_path, fake, monkeypatch):
    monkeypatch.delenv("SLIM_TEST_TEACHER_KEY", raising=False)
    fake.reset()
    done = _slim_teacher(tmp_path, teacher_config(tmp_path, fake), {})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "SLIM_TEST_TEACHER_KEY is not set" in output
    assert "AwaitingRetry" not in output and "Retrying" not in output  # no 30 s of retries
    assert fake.settled_calls() == 0


def test_a_refused_key_stops_the_stage_with_an_error_and_a_non_zero_exit(tmp_path, fake):
    """401 on every call: the stage stops at the first refusal instead of sending every prompt
    and dead-lettering them all, and the command says why and exits non-zero."""
    from slim_core.config import load_config
    from slim_core.teacher.stage import answer_cache

    fake.reset(required_key="the-key-the-endpoint-expects")
    path = teacher_config(tmp_path, fake)
    done = _slim_teacher(tmp_path, path, {"SLIM_TEST_TEACHER_KEY": SECRET})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "refused the API key" in output and "HTTP 401" in output
    assert SECRET not in output
    assert fake.settled_calls() < 20  # not every prompt: the first refusals stop the stage
    assert "AwaitingRetry" not in output
    assert not answer_cache(load_config(path)).dead_letters()  # a key problem is no dead letter


def test_sigterm_during_a_retry_after_wait_stops_at_once_and_keeps_the_answers(tmp_path, fake):
    """A 429 asks for 30 s. A SIGTERM in that wait ends the command at once: the answers
    already received are written (also those not yet due for writing), and no request leaves
    after the stop, so none is billed after it."""
    import signal

    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.teacher.stage import answer_cache, prompt_keys, teacher_prompts
    from slim_core.teacher.stage import teacher_config as teacher_config_of

    path = teacher_config(tmp_path, fake)
    config = load_config(path)
    prompts = teacher_prompts(config, prepare_data(config))
    fake.reset({p.text: ["429:30"] for p in prompts[10:]})  # the first 10 are answered
    cache = answer_cache(config)
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "child-prefect"),
        "SLIM_TEST_TEACHER_KEY": SECRET,
    }
    child_log = tmp_path / "child.log"
    with spawned(SLIM_TEACHER + [str(path)], env=env, log=child_log) as child:
        # the last batches' 429s arrived: their prompts now wait 30 s
        wait_until(
            lambda: fake.calls[prompts[19].text] and fake.calls[prompts[10].text], 180, child
        )
        assert child.poll() is None, child_log.read_text()[-3000:]
        calls = fake.settled_calls()
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(timeout=20) != 0  # not after the 30 s wait
    assert fake.settled_calls() == calls  # nothing sent after the stop
    [manifest] = (Path(config.run.output_dir) / "flow-runs").glob("*.json")
    assert json.loads(manifest.read_text())["state"] == "Crashed"  # a stopped run is traced
    assert cache.answered_keys() == set(
        prompt_keys(prompts[:10], "openai-compatible:teacher-test", teacher_config_of(config))
    )


def test_reset_budget_command_starts_the_spend_from_zero(tmp_path, fake):
    from typer.testing import CliRunner

    from slim_cli.app import app
    from slim_core.config import load_config
    from slim_core.teacher.stage import answer_cache

    path = teacher_config(tmp_path, fake)
    cache = answer_cache(load_config(path))
    row = {"key": "k", "user_idx": 1, "cutoff": 3, "model": "m", "template_version": "v"}
    cache.write_answers([row | {"answer": "a", "created_at": "t", "cost_usd": 0.25}])
    done = CliRunner().invoke(app, ["teacher", "reset-budget", "-c", str(path)])
    assert done.exit_code == 0, done.output
    assert "$0.2500 spent before" in done.output and cache.spent_usd() == 0
    assert cache.answered_keys() == {"k"}  # what was paid for stays


def test_several_samples_per_prompt_keep_the_first_as_the_rationale(tmp_path, fake, monkeypatch):
    """teacher.samples 3: every prompt is asked three times (three cache keys, three paid
    calls); teacher_rationales holds the first answer of each, teacher_samples the others."""
    import pyarrow.parquet as pq

    from flows.pipeline import teacher_flow
    from slim_core.config import load_config
    from slim_core.teacher.stage import teacher_samples_file

    monkeypatch.setenv("SLIM_TEST_TEACHER_KEY", SECRET)
    path = teacher_config(tmp_path, fake)
    values = yaml.safe_load(path.read_text())
    values["teacher"].update(samples=3, temperature=0.7)
    path.write_text(yaml.safe_dump(values))
    fake.reset()
    result = teacher_flow(str(path))["teacher"]
    assert fake.settled_calls() == 60 and set(fake.calls.values()) == {3}
    assert result.summary["prompts"] == 20 and result.summary["answered"] == 20
    assert result.summary["other_samples_answered"] == 40
    samples = pq.read_table(teacher_samples_file(load_config(path))).to_pylist()
    assert sorted({r["sample"] for r in samples}) == [1, 2]
    assert len(pq.read_table(result.rationales)) == 20


def test_samples_need_a_temperature_and_best_of_k_needs_samples(tmp_path, fake):
    from slim_core.config import load_config
    from slim_core.errors import ConfigError

    path = teacher_config(tmp_path, fake)
    values = yaml.safe_load(path.read_text())
    values["teacher"]["samples"] = 3
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="teacher.samples 3 with temperature 0"):
        load_config(path)
    values["teacher"].update(samples=1, cutoffs=["train", "valid"])
    values["student"] = {"base_model": "b", "select": "best_of_k"}
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="set teacher.samples to 2 or more"):
        load_config(path)


def test_dry_run_plans_the_teacher_calls_and_their_cost_without_calling(tmp_path, fake_openai):
    """`slim run --dry-run` (the real command): the data stage and each teacher prompt marked
    cached or not, the calls and the most they cost; nothing runs, nothing is asked."""
    import os
    import subprocess
    import sys

    from tests.helpers import e2e_config

    fake_openai.reset()
    path = e2e_config(tmp_path, fake_openai.url, tmp_path / "no-student-needed")
    config = yaml.safe_load(path.read_text())
    config["teacher"] |= {"price_input_per_1k": 1.0, "price_output_per_1k": 2.0}
    path.write_text(yaml.safe_dump(config))
    slim = str(Path(sys.executable).parent / "slim")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}

    def dry_run() -> str:
        done = subprocess.run(
            [slim, "run", "-c", str(path), "--dry-run"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "| data | to compute |" in dry_run()
    assert not (tmp_path / "run" / "data").exists()  # planned, not run
    prepared = subprocess.run([slim, "prepare", "-c", str(path)], env=env, capture_output=True)
    assert prepared.returncode == 0
    plan = dry_run()
    assert "| data | cached |" in plan and "| teacher | 0 of 16 prompts cached |" in plan
    calls = int(plan.split("| teacher | 0 of 16 prompts cached | ")[1].split(" LLM calls")[0])
    most = float(plan.split("at most $")[1].split(" ")[0])
    from slim_core.config import load_config

    answer_tokens = load_config(path).teacher.max_tokens  # the most each answer could be
    assert calls == 16 and most > 16 * answer_tokens * 2.0 / 1000
    assert sum(fake_openai.calls.values()) == 0
