"""SLIM's main flow: every stage in order, each a cached task, from raw files to a report.

data -> teacher -> SFT -> student inference -> encoding -> recommenders -> evaluation -> report.
Every stage reuses its outputs while its inputs and settings are unchanged, so a rerun with
nothing changed loads no LLM, and a changed stage recomputes only itself and what follows.
Side flows: teacher only, student only, retry failed teacher prompts, scheduled regeneration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import Task, flow
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.callables import get_call_parameters

from flows.identity import (
    flows_version,
    one_run_per_folder,
    run_name,
    skipped_without_llm,
    tag_flow_run,
    with_parameters,
)
from flows.tracking import tracked
from slim_core.config import SlimConfig, TeacherConfig, load_config
from slim_core.data import DataStageResult
from slim_core.errors import ConfigError
from slim_core.prompts import Prompt
from slim_core.rationale_vectors import RationaleVectors
from slim_core.rec.pipeline import (
    EncodeResult,
    RecommenderResult,
    needs_item_text,
    needs_user_text,
    training_plan,
)
from slim_core.runtime import Runtime
from slim_core.stages import Stage
from slim_core.student.inference import StudentInferenceResult, student_prompts
from slim_core.student.sft import check_trainer_settings
from slim_core.student.stage import StudentModel, current_student, student_config
from slim_core.teacher.run import Batch, TeacherReport
from slim_core.teacher.stage import answer_cache, prompt_keys, teacher_config, teacher_prompts
from storage import RunFolder, code_version, remove_stale_temp_files
from tasks.data import run_prepare_data
from tasks.manifest import record_flow_run
from tasks.progress import StageProgress
from tasks.recommend import (
    encode_items,
    evaluate_recommenders_task,
    history_control,
    rationale_encoding,
)
from tasks.report import report_task
from tasks.stage import batch_call, stage_call, stage_result
from tasks.student import (
    finetune_student_task,
    student_rationales_task,
    student_shard_task,
    student_shards,
)
from tasks.teacher import (
    backend_for,
    stop_requests_on_signal,
    teacher_batch_task,
    teacher_batches,
    teacher_rationales_task,
)

log = logging.getLogger("slim_core.storage")  # under slim_core: its lines reach Prefect
# Every flow run leaves a manifest (its config, data fingerprint, seeds, versions, commit),
# whether it completed, failed, crashed (SIGTERM) or was cancelled.
TRACED = {
    # Prefect versions a flow by its function's source file, which the decorators below wrap:
    # the flows' own sources instead.
    "version": flows_version(),
    "on_completion": [record_flow_run],
    "on_failure": [record_flow_run],
    "on_crashed": [record_flow_run],
    "on_cancellation": [record_flow_run],
}


STAGES = ("data", "teacher", "student", "encode", "recommenders", "report")
LLM_STAGES = ("teacher", "student")


def _load(
    config_path: str,
    teacher_users: int | None = None,
    student_users: int | None = None,
    budget_usd: float | None = None,
    *,
    stages: tuple[str, ...] = STAGES,
    without_llm: bool = False,
) -> SlimConfig:
    """Validate the configuration, apply the run's parameters, tag the flow run, and save the
    configuration, resolved, beside the run's outputs."""
    config = load_config(config_path)
    skipped = skipped_without_llm(config) if without_llm else []
    config = with_parameters(config, teacher_users, student_users, budget_usd, without_llm)
    if skipped:
        log.warning(
            "slim train runs no LLM: skipping %s (they read the pipeline's rationales: `slim "
            "run` trains them); training %s",
            ", ".join(skipped),
            ", ".join(config.recommender.variants),
        )
    if config.student is not None and {"teacher", "student"} <= set(stages):
        # fine-tuning follows a paid teacher stage: a typo in student.sft fails before it
        check_trainer_settings(config.student)
    # a stage without its section (teacher, student) is left out of the run
    tag_flow_run(config, [s for s in stages if s not in LLM_STAGES or getattr(config, s)])
    # config.yaml is the latest run's; the flow run's own copy is what its manifest records, even
    # when another configuration's run shares the output folder.
    RunFolder(config.run.output_dir).save_config(config.to_yaml(), flow_run.id, code_version())
    for leftover in remove_stale_temp_files(config.run.output_dir):
        log.info("removed %s: a temporary file of a writer that was killed", leftover)
    return config


@flow(name="slim-prepare", flow_run_name=run_name("prepare"), **TRACED)
@one_run_per_folder
def prepare_flow(config_path: str) -> DataStageResult:
    """Data stage only: raw files -> interactions, items, sequences."""
    return run_prepare_data(_load(config_path, stages=("data",)))


def _recommenders(
    runtime: Runtime,
    config: SlimConfig,
    data: DataStageResult,
    rationales: tuple[RationaleVectors, ...] = (),
) -> RecommenderResult:
    encoded = encode_items(config, data) if needs_item_text(config) else None
    rationales = _with_history_control(config, data, encoded, rationales)
    runs = training_plan(runtime, config, data, encoded, rationales)
    rec = config.recommender
    # Worker processes here, unless Dask's workers are the processes; every run is submitted at
    # once and waits for a free worker.
    workers = 1 if config.run.task_runner == "dask" else rec.workers
    with runtime.workers(workers, rec.threads):
        progress = StageProgress("recommenders", len(runs), "training runs")
        trained = _run_stages(config, runs, workers > 1, progress)
    rows = [row for run in trained for row in run]
    return evaluate_recommenders_task(config, data, encoded, rows, rationales)


def _with_history_control(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    rationales: tuple[RationaleVectors, ...],
) -> tuple[RationaleVectors, ...]:
    """Add the `history` source (no LLM) when configured: it needs the student's pairs and the
    item vectors, so it comes after encoding."""
    student = next((r for r in rationales if r.source == "student"), None)
    if "history" not in config.recommender.rationales or student is None or encoded is None:
        return rationales
    return (*rationales, history_control(config, data, encoded, student))


@flow(name="slim-train", flow_run_name=run_name("train", without_llm=True), **TRACED)
@one_run_per_folder
@tracked(without_llm=True)
def train_flow(config_path: str) -> dict[str, object]:
    """Data, item encoding and every recommender run, evaluated under both protocols."""
    config = _load(config_path, stages=("data", "encode", "recommenders"), without_llm=True)
    data = run_prepare_data(config)
    with Runtime() as runtime:
        return {"data": data, "recommenders": _recommenders(runtime, config, data)}


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Seconds the block took, as `timings[stage]` (the report's stage times)."""
    started = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - started


@flow(name="slim-pipeline", flow_run_name=run_name("slim"), **TRACED)
@one_run_per_folder
@tracked()
def slim_pipeline(
    config_path: str,
    teacher_users: int | None = None,
    student_users: int | None = None,
    budget_usd: float | None = None,
) -> dict[str, object]:
    """The whole pipeline for one configuration file, from raw interactions to the report.

    Without a teacher section it trains and evaluates the recommenders without rationales; a
    student section needs the teacher's rationales to learn from. The optional parameters
    override teacher.users, student.users and teacher.budget_usd for this run.
    """
    config = _load(config_path, teacher_users, student_users, budget_usd, stages=STAGES)
    with Runtime() as runtime:
        return _whole_pipeline(runtime, config)


def _whole_pipeline(runtime: Runtime, config: SlimConfig) -> dict[str, object]:
    timings: dict[str, float] = {}
    with _timed(timings, "data"):
        data = run_prepare_data(config)
    wanted = set(config.recommender.rationales) if needs_user_text(config) else set()
    encodings: list[Stage] = []
    teacher = model = student = None
    if config.teacher is not None:
        with _timed(timings, "teacher"):
            teacher = _teacher(runtime, config, data)
        if "teacher" in wanted:
            encodings.append(rationale_encoding(config, "teacher", teacher.rationales))
    if config.student is not None:
        if teacher is None:
            raise ConfigError("the student section needs a teacher section to learn from")
        with _timed(timings, "student fine-tuning"):
            model = finetune_student_task(config, data, str(teacher.rationales))
        with _timed(timings, "student inference"):
            student = _student_inference(runtime, config, data, model)
        if wanted & {"student", "history"}:  # the history control sits at the student's pairs
            encodings.append(rationale_encoding(config, "student", student.rationales))
    vectors = _run_stages(config, encodings)  # one encoding task per source
    with _timed(timings, "encoding and recommenders"):
        recommenders = _recommenders(runtime, config, data, tuple(vectors))
    return {
        "data": data,
        "teacher": teacher,
        "student_model": model,
        "student": student,
        "rationale_vectors": vectors,
        "recommenders": recommenders,
        "report": report_task(config, data, recommenders, teacher, model, student, timings),
    }


def _run_stages(
    config: SlimConfig,
    stages: list[Stage],
    together: bool = False,
    progress: StageProgress | None = None,
) -> list:
    """Run content-keyed stages as tasks (see `_each`) and read their results."""
    root = RunFolder(config.run.output_dir).root
    _each(config, [(stage_call(s, root), (s, root)) for s in stages], together, progress)
    return [stage_result(s, root) for s in stages]


def _each(
    config: SlimConfig,
    calls: list[tuple[Task, tuple]],
    together: bool = False,
    progress: StageProgress | None = None,
) -> list:
    """Run independent (task, arguments) calls: in order in this process (thread runner: a local
    model is loaded once and never shared between threads), or all submitted at once (Dask, or
    `together` for tasks that share no model). `progress` moves as each call finishes."""
    results = []
    if together or config.run.task_runner == "dask":
        futures = [task.submit(*args) for task, args in calls]
        if progress is not None:  # the bar moves as runs finish, in whatever order
            for _ in as_completed(futures):
                progress.advance()
        return [future.result() for future in futures]
    for task, args in calls:
        results.append(task(*args))
        if progress is not None:
            progress.advance()
    return results


def _ask_in_batches(
    runtime: Runtime, config: SlimConfig, prompts: list[Prompt], replay_failed: bool = False
) -> TeacherReport:
    cfg = teacher_config(config)
    with stop_requests_on_signal(runtime):  # a stop cancels HTTP waits at once, not after them
        return _ask_batches(runtime, config, cfg, prompts, replay_failed)


def _ask_batches(
    runtime: Runtime,
    config: SlimConfig,
    cfg: TeacherConfig,
    prompts: list[Prompt],
    replay_failed: bool,
) -> TeacherReport:
    batches = teacher_batches(runtime, config, prompts, replay_failed)
    progress = StageProgress("teacher", len(batches), "batches")
    if cfg.budget_usd is not None:
        return _within_budget(runtime, config, cfg.budget_usd, batches, replay_failed, progress)
    http = cfg.backend == "openai" and config.run.task_runner != "dask"
    # HTTP batches write their answers in halves (below): a kill loses at most half of each.
    write_every = max(1, -(-cfg.batch_size // 2)) if http else None
    calls = [
        (
            batch_call(teacher_batch_task, config.run.output_dir, batch),
            (runtime, config, batch.prompts, number, None, replay_failed, write_every),
        )
        for number, batch in enumerate(batches, start=1)
    ]
    if not http:
        return _reports(batches, _each(config, calls, progress=progress))
    # HTTP batches two at a time, in order: one batch alone ends waiting for its slowest
    # requests while the other connections idle; with the next batch running, its requests
    # take those connections (both share the backend's concurrency bound). Each batch starts
    # once the one two before it is done, so a kill leaves the batches before it answered.
    with ThreadPoolTaskRunner(max_workers=2) as runner:
        futures: list = []
        for task, args in calls:
            parameters = get_call_parameters(task.fn, args, {})
            futures.append(runner.submit(task, parameters, wait_for=futures[-2:-1]))
        parts = []
        for future in futures:
            parts.append(future.result())
            progress.advance()
        return _reports(batches, parts)


def _reports(batches: list[Batch], parts: list[TeacherReport]) -> TeacherReport:
    """The run's report: a done batch counts as cached (its task may have returned the report
    of the run that paid for it)."""
    report = TeacherReport()
    for batch, part in zip(batches, parts, strict=True):
        report = report.add(batch.cached_report() if batch.done else part)
    return report


def _within_budget(
    runtime: Runtime,
    config: SlimConfig,
    budget_usd: float,
    batches: list[Batch],
    replay_failed: bool,
    progress: StageProgress,
) -> TeacherReport:
    """One batch after the other: each needs what the last cost. The budget is checked against
    the cache's ledger (every run's spend, this one's too)."""
    report = TeacherReport()
    for number, batch in enumerate(batches, start=1):
        args = (runtime, config, batch.prompts, number, budget_usd, replay_failed)
        part = batch_call(teacher_batch_task, config.run.output_dir, batch)(*args)
        report = report.add(_reports([batch], [part]))
        progress.advance()
        if report.stopped_by_budget:
            break
    return report


@flow(name="slim-teacher", flow_run_name=run_name("teacher"), **TRACED)
@one_run_per_folder
def teacher_flow(
    config_path: str, teacher_users: int | None = None, budget_usd: float | None = None
) -> dict[str, object]:
    """Teacher rationales for the sampled users, batch by batch, cached per prompt."""
    config = _load(
        config_path, teacher_users=teacher_users, budget_usd=budget_usd, stages=("data", "teacher")
    )
    data = run_prepare_data(config)
    with Runtime() as runtime:
        return {"data": data, "teacher": _teacher(runtime, config, data)}


@flow(name="slim-teacher-retry-failed", flow_run_name=run_name("retry failed"), **TRACED)
@one_run_per_folder
def retry_failed_flow(config_path: str, budget_usd: float | None = None) -> dict[str, object]:
    """Replay exactly the prompts in the dead-letter table (failed, never answered)."""
    config = _load(config_path, budget_usd=budget_usd, stages=("data", "teacher"))
    data = run_prepare_data(config)
    prompts = teacher_prompts(config, data)
    dead = {row["key"] for row in answer_cache(config).dead_letters()}
    with Runtime() as runtime:
        keys = prompt_keys(prompts, backend_for(runtime, config).model_id, teacher_config(config))
        failed = [prompt for prompt, key in zip(prompts, keys, strict=True) if key in dead]
        report = _ask_in_batches(runtime, config, failed, replay_failed=True)
        return {
            "data": data,
            "replayed": len(failed),
            "teacher": teacher_rationales_task(runtime, config, prompts, report),
        }


def _student_inference(
    runtime: Runtime, config: SlimConfig, data: DataStageResult, model: StudentModel
) -> StudentInferenceResult:
    """One task per shard of `shard_users` users; each writes its answers when it finishes."""
    split_prompts = student_prompts(student_config(config), data, config.data.domain)
    shards = student_shards(runtime, config, model, [prompt for _, prompt in split_prompts])
    calls = [
        (
            batch_call(student_shard_task, config.run.output_dir, shard),
            (runtime, config, model, shard.prompts, n),
        )
        for n, shard in enumerate(shards, 1)
    ]
    try:
        progress = StageProgress("student", len(calls), "shards")
        report = _reports(shards, _each(config, calls, progress=progress))
        return student_rationales_task(runtime, config, model, split_prompts, report)
    finally:
        runtime.release("student")  # the recommenders need the memory


def _teacher(runtime: Runtime, config: SlimConfig, data: DataStageResult):
    prompts = teacher_prompts(config, data)
    try:
        report = _ask_in_batches(runtime, config, prompts)
        return teacher_rationales_task(runtime, config, prompts, report)
    finally:
        # A local teacher (2 GB for the demo's) was held through fine-tuning and inference.
        runtime.release("teacher")


@flow(name="slim-student", flow_run_name=run_name("student"), **TRACED)
@one_run_per_folder
def student_flow(config_path: str) -> dict[str, object]:
    """Teacher (answers come from its cache when already paid for), fine-tuning, inference."""
    config = _load(config_path, stages=("data", "teacher", "student"))
    data = run_prepare_data(config)
    with Runtime() as runtime:
        teacher = _teacher(runtime, config, data)
        model = finetune_student_task(config, data, str(teacher.rationales))
        return {
            "data": data,
            "teacher": teacher,
            "student_model": model,
            "student": _student_inference(runtime, config, data, model),
        }


@flow(name="slim-regenerate", flow_run_name=run_name("regenerate"), **TRACED)
@one_run_per_folder
def regenerate_flow(config_path: str, student_users: int | None = None) -> dict[str, object]:
    """New interaction data -> rationales for the users whose prompts changed, nobody else.

    Reads the configuration's data again (a changed file makes a new data stage), reuses the
    student fine-tuned last (no teacher calls, no training), and generates only prompts without
    an answer on disk. Deploy it on a schedule with
    `slim regenerate --config F --cron "0 3 * * *"`.
    """
    config = _load(config_path, student_users=student_users, stages=("data", "student"))
    data = run_prepare_data(config)
    model = current_student(config)
    with Runtime() as runtime:
        return {"data": data, "student": _student_inference(runtime, config, data, model)}
