"""The teacher stage as Prefect tasks: one task per batch of prompts, never one per call.

Batch tasks retry with exponential backoff (a whole batch failing means the endpoint is down;
single-call faults are already retried inside the backend), but never for a configuration
error (a missing or refused API key) or a stop signal, which a retry cannot mend; they carry
the `slim-teacher` tag, so `prefect concurrency-limit create slim-teacher 4` caps how many run
at once. Answers are cached per prompt on disk, so a retried or replayed batch pays only for
what is still unanswered, and a batch whose every prompt is done shows Cached.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.states import State
from prefect.tasks import exponential_backoff

from slim_core.config import SlimConfig, TeacherConfig
from slim_core.errors import ConfigError, SlimError
from slim_core.llm.base import LLMBackend
from slim_core.prompts import Prompt
from slim_core.runtime import Runtime
from slim_core.teacher.run import Batch, TeacherReport, ask_teacher, batches
from slim_core.teacher.stage import (
    TeacherStageResult,
    answer_cache,
    decoding,
    make_backend,
    prices,
    summary_markdown,
    teacher_config,
    write_teacher_rationales,
)


def make_teacher_backend(cfg: TeacherConfig) -> LLMBackend:
    """The configured backend, its API key read from a Prefect Secret block if one is named."""
    api_key = None
    if cfg.api_key_block:
        from prefect.blocks.system import Secret

        try:
            api_key = Secret.load(cfg.api_key_block).get()
        except ValueError as error:  # Prefect's "Unable to find block document named ..."
            raise ConfigError(
                f"teacher.api_key_block: no Prefect Secret block named {cfg.api_key_block!r} "
                f"(create one: Secret(value=...).save({cfg.api_key_block!r}))"
            ) from error
    return make_backend(cfg, api_key=api_key)


@contextlib.contextmanager
def stop_requests_on_signal(runtime: Runtime) -> Iterator[None]:
    """While teacher batches run, SIGTERM and SIGINT first cancel every HTTP request and backoff
    wait of the runtime's backends, then do what they did before.

    Why: the batches run in worker threads, and a stopped flow joins them before it exits.
    Prefect turns SIGTERM into an exception in the main thread only, so a batch waiting out a
    429's Retry-After kept the process alive and then sent a request, billed after the stop.
    Handlers can only be set in the main thread; elsewhere (a Dask worker) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # An ignored signal stays ignored (`nohup`), and one set outside Python (None) is left alone.
    previous = {
        number: handler
        for number in (signal.SIGTERM, signal.SIGINT)
        if (handler := signal.getsignal(number)) not in (signal.SIG_IGN, None)
    }

    def stop(number: int, frame: object) -> None:
        runtime.stop_requests()
        handler = previous[number]
        if callable(handler):
            handler(number, frame)
        elif number == signal.SIGTERM:  # SIG_DFL: end as the default would
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
        else:
            raise KeyboardInterrupt(f"stopped by signal {number}")

    for number in previous:
        signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _worth_retrying(task: object, task_run: object, state: State) -> bool:
    """Retry a failed batch unless its error is one a retry cannot mend."""
    from slim_core.llm.openai_http import RequestsStopped

    error = state.result(raise_on_failure=False)
    return not isinstance(error, SlimError | RequestsStopped)


def backend_for(runtime: Runtime, config: SlimConfig) -> LLMBackend:
    """The teacher's backend, made once per runtime (a local model loads once, not per batch;
    HTTP batches in two threads share one backend, so one concurrency bound). The flow releases
    it when the stage is done: the stages after it need the memory."""
    cfg = teacher_config(config)
    return runtime.hold("teacher", cfg.model_dump_json(), lambda: make_teacher_backend(cfg))


def teacher_batches(
    runtime: Runtime, config: SlimConfig, prompts: list[Prompt], replay_failed: bool
) -> list[Batch]:
    """The prompts in batches of teacher.batch_size, each keyed by its prompts' answer keys and
    done when each is answered (or, unless replaying, failed for good)."""
    cfg = teacher_config(config)
    model_id = backend_for(runtime, config).model_id  # a local model's id needs no load
    cache = answer_cache(config)
    return batches(prompts, cfg.batch_size, model_id, cache, decoding(cfg), not replay_failed)


@task(
    name="teacher-batch",
    task_run_name="teacher batch {number}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=_worth_retrying,
    tags=["slim-teacher"],
)
def teacher_batch_task(
    runtime: Runtime,
    config: SlimConfig,
    prompts: list[Prompt],
    number: int,
    budget_usd: float | None,
    replay_failed: bool = False,
    write_every: int | None = None,
) -> TeacherReport:
    """Ask the teacher for one batch; answers and failures are on disk when this returns
    (written `write_every` at a time, or all at the end).

    Prompts in the dead-letter table are skipped (a rerun neither pays for them again nor loads
    a local model for them) unless `replay_failed`: the retry-failed flow replays them.
    """
    cfg = teacher_config(config)
    return ask_teacher(
        prompts,
        backend_for(runtime, config),
        answer_cache(config),
        decoding(cfg),
        batch_size=write_every or len(prompts) or 1,
        malformed_retries=cfg.malformed_retries,
        prices=prices(cfg),
        budget_usd=budget_usd,
        progress=f"teacher batch {number}",
        skip_failed=not replay_failed,
    )


@task(name="teacher-rationales")
def teacher_rationales_task(
    runtime: Runtime, config: SlimConfig, prompts: list[Prompt], report: TeacherReport
) -> TeacherStageResult:
    """Write teacher_rationales.parquet and publish the cost and latency summary."""
    result = write_teacher_rationales(
        config, prompts, backend_for(runtime, config).model_id, report
    )
    create_markdown_artifact(
        key="teacher-summary",
        markdown=f"# Teacher\n\n{summary_markdown(result.summary)}",
        description="Calls, tokens, cost, latency percentiles and failures",
    )
    return result
