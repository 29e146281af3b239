"""One Prefect task runs any content-keyed stage (`slim_core.stages.Stage`).

Its cache key is the stage's own key (`cached_call`, which keys the teacher's batches and
the student's shards too), and its cached result is nothing but the stage folder's
path: the folder stays the single source of truth. A folder that is missing or incomplete makes
the task refresh its cache instead of trusting it, so a deleted folder is computed again. The
stage's artifacts are published by the run that computed it, once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext

from slim_core.stages import Stage, StageHooks, compute, finished
from slim_core.teacher.run import Batch
from storage import RunFolder, canonical_hash
from tasks.progress import CountProgress

R = TypeVar("R")


def cached_call(task: Task, run_root: Path, name: str, key: str, done: bool) -> Task:
    """`task` cached under its content `key` within one run folder: its result persisted, a
    rerun shown Cached; recomputed (cache refreshed) when its work is not `done` on disk."""
    run = canonical_hash(str(run_root), 8)
    cache_key = "-".join(("slim", name.replace("/", "-"), run, key))  # names a results file
    return task.with_options(
        cache_key_fn=lambda *_: cache_key, persist_result=True, refresh_cache=not done
    )


def batch_call(task: Task, output_dir: Path, batch: Batch) -> Task:
    """An LLM batch's task (teacher batch, student shard), shown Cached when every prompt in
    it is done on disk."""
    return cached_call(task, RunFolder(output_dir).root, task.name, batch.key, batch.done)


@task
def stage_task(stage: Stage, run_root: Path) -> str:
    """Compute (or reuse) the stage's folder and publish what it shows; returns the folder."""
    context = TaskRunContext.get()
    ids = {}
    if context is not None:  # for the records a worker process logs meanwhile
        ids = {"flow_run_id": context.task_run.flow_run_id, "task_run_id": context.task_run.id}
    progress = CountProgress(stage.name, stage.progress_unit) if stage.progress_unit else None
    folder = compute(stage, RunFolder(run_root), StageHooks(progress, ids))
    for artifact in stage.artifacts(folder):
        create_markdown_artifact(artifact.markdown, artifact.key, artifact.description)
    return str(folder.path)


def stage_call(stage: Stage[R], output_dir: Path) -> Task:
    """The stage's task, named for it, cached under the stage's key and told to refresh when
    its folder is not done; call it with `(stage, run_root)`, or `.submit` it."""
    run = RunFolder(output_dir)
    done = stage.is_done(stage.folder(run))
    # Prefect names the run `<task>-<random words>` unless the stage names it
    named = {"task_run_name": stage.run_name} if stage.run_name != stage.task_name else {}
    key = "-".join(filter(None, (stage.key, stage.part)))
    named_task = stage_task.with_options(name=stage.task_name, tags=[stage.tag], **named)
    return cached_call(named_task, run.root, stage.name, key, done)


def stage_result(stage: Stage[R], output_dir: Path) -> R:
    """After its task: the stage's result, read from its folder, which the run now points at
    (a cached task did not run to say so)."""
    return finished(stage, RunFolder(output_dir))


def run_stage_task(stage: Stage[R], output_dir: Path) -> R:
    """Run the stage as its task and return its result."""
    stage_call(stage, output_dir)(stage, RunFolder(output_dir).root)
    return stage_result(stage, output_dir)
