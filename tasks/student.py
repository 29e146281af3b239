"""The student stage as Prefect tasks: fine-tuning, then one inference task per shard of users.

Fine-tuning is a stage (content key: teacher pairs, settings, base model hash): a rerun with
nothing changed finds `quality.json` and shows Cached. Inference shards
write their answers as they finish, so a retried or rerun flow generates only what is missing,
and a shard with nothing missing shows Cached.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult
from slim_core.llm.base import LLMBackend
from slim_core.prompts import Prompt
from slim_core.runtime import Runtime
from slim_core.student.inference import (
    StudentInferenceResult,
    decoding,
    generate_rationales,
    write_student_rationales,
)
from slim_core.student.stage import (
    StudentFineTuning,
    StudentModel,
    make_student_backend,
    student_config,
    student_folder,
)
from slim_core.teacher.cache import AnswerCache
from slim_core.teacher.run import Batch, TeacherReport, batches
from tasks.stage import run_stage_task


def student_backend(runtime: Runtime, config: SlimConfig, model: StudentModel) -> LLMBackend:
    """The student model, loaded once per runtime (not once per shard); the flow releases it
    when every shard is written: the recommenders need the memory."""
    return runtime.hold(
        "student",
        f"{config.model_dump_json()} {model.folder}",
        lambda: make_student_backend(student_config(config), model),
    )


def finetune_student_task(
    config: SlimConfig, data: DataStageResult, teacher_rationales: str
) -> StudentModel:
    """LoRA fine-tuning on the teacher's rationales as a stage task (shown Cached on a rerun
    with nothing changed); publishes the before/after quality table."""
    stage = StudentFineTuning(config, data, Path(teacher_rationales))
    return run_stage_task(stage, config.run.output_dir)


def student_shards(
    runtime: Runtime, config: SlimConfig, model: StudentModel, prompts: list[Prompt]
) -> list[Batch]:
    """The prompts in shards of `shard_users` users, each done when every prompt has an answer
    (or a failure) on disk."""
    cfg = student_config(config)
    model_id = student_backend(runtime, config, model).model_id  # no load for the id
    cache = AnswerCache(student_folder(config) / "generations")
    size = cfg.shard_users * len(cfg.cutoffs)
    return batches(prompts, size, model_id, cache, decoding(cfg), skip_failed=True)


@task(
    name="student-shard",
    task_run_name="student shard {number}",
    retries=1,
    retry_delay_seconds=10,
    tags=["slim-student"],
)
def student_shard_task(
    runtime: Runtime, config: SlimConfig, model: StudentModel, prompts: list[Prompt], number: int
) -> TeacherReport:
    """Generate one shard's missing rationales; they are on disk when this returns."""
    backend = student_backend(runtime, config, model)
    return generate_rationales(prompts, backend, student_folder(config), student_config(config))


@task(name="student-rationales")
def student_rationales_task(
    runtime: Runtime,
    config: SlimConfig,
    model: StudentModel,
    split_prompts: list[tuple[str, Prompt]],
    report: TeacherReport,
) -> StudentInferenceResult:
    """student_rationales.parquet from the shards, and a summary artifact."""
    backend = student_backend(runtime, config, model)
    result = write_student_rationales(
        split_prompts, backend.model_id, student_folder(config), student_config(config), report
    )
    lines = "\n".join(f"| {k} | {v} |" for k, v in result.summary.items())
    create_markdown_artifact(
        key="student-rationales",
        markdown=f"# Student rationales\n\n| | |\n|---|---|\n{lines}\n",
        description="Rationales written, reused, failed",
    )
    return result
