"""The student stage as Prefect tasks: fine-tuning, then one inference task per shard of users.

Fine-tuning is cached on disk by its own content key (teacher pairs, settings, base model
hash): a rerun with nothing changed finds `quality.json` and returns at once. Inference shards
write their answers as they finish, so a retried or rerun flow generates only what is missing.
"""

from __future__ import annotations

import gc

from prefect import task
from prefect.artifacts import create_markdown_artifact

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult
from slim_core.llm.base import LLMBackend
from slim_core.prompts import Prompt
from slim_core.student.inference import (
    StudentInferenceResult,
    generate_rationales,
    write_student_rationales,
)
from slim_core.student.stage import (
    StudentModel,
    finetune_student,
    make_student_backend,
    quality_markdown,
    student_config,
    student_folder,
)
from slim_core.teacher.run import TeacherReport

_BACKENDS: dict[tuple[str, str], LLMBackend] = {}


def student_backend(config: SlimConfig, model: StudentModel) -> LLMBackend:
    """The student model loads once per process, not once per shard."""
    key = (config.model_dump_json(), str(model.folder))
    if key not in _BACKENDS:
        _BACKENDS.clear()  # one student at a time in memory
        _BACKENDS[key] = make_student_backend(student_config(config), model)
    return _BACKENDS[key]


def release_backends() -> None:
    """Drop the student model once every shard is written: the recommenders need the memory."""
    _BACKENDS.clear()
    gc.collect()


@task(name="student-finetune", tags=["slim-student"])
def finetune_student_task(
    config: SlimConfig, data: DataStageResult, teacher_rationales: str
) -> StudentModel:
    """LoRA fine-tuning on the teacher's rationales; publishes the before/after quality table."""
    model = finetune_student(config, data, teacher_rationales)
    create_markdown_artifact(
        key="student-quality",
        markdown=f"# Student quality\n\n{quality_markdown(model.quality)}\n\nFolder: `{model.folder}`\n",
        description="Three-step share, ROUGE-L and embedding cosine against the teacher",
    )
    return model


@task(
    name="student-shard",
    task_run_name="student shard {number}",
    retries=1,
    retry_delay_seconds=10,
    tags=["slim-student"],
)
def student_shard_task(
    config: SlimConfig, model: StudentModel, prompts: list[Prompt], number: int
) -> TeacherReport:
    """Generate one shard's missing rationales; they are on disk when this returns."""
    backend = student_backend(config, model)
    return generate_rationales(prompts, backend, student_folder(config), student_config(config))


@task(name="student-rationales")
def student_rationales_task(
    config: SlimConfig,
    model: StudentModel,
    split_prompts: list[tuple[str, Prompt]],
    report: TeacherReport,
) -> StudentInferenceResult:
    """student_rationales.parquet from the shards, and a summary artifact."""
    backend = student_backend(config, model)
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
