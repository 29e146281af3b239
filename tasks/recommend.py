"""Encoding, recommender training and evaluation as cached Prefect tasks.

One task per shard: item encoding, one training run per (model, variant, seed), and one task
that evaluates the runs into the results table, chart and artifacts. Cache keys are the stage
keys (data, vectors and settings) plus the run; a run's cached rows are reused while nothing
it depends on changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult
from slim_core.encoding import TextEncoder
from slim_core.rationale_score import history_vectors
from slim_core.rationale_vectors import RationaleVectors, encode_rationales
from slim_core.rec.pipeline import (
    EncodeResult,
    RecommenderResult,
    RunSpec,
    encode_stage,
    encode_stage_key,
    finish_recommender_stage,
    protocol_note,
    recommender_stage_folder,
    train_run,
)
from slim_core.rec.report import summary_records
from slim_core.rec.workers import call
from slim_core.student.stage import student_config
from storage import RunFolder
from tasks.progress import CountProgress
from tasks.report import embed_images


def _encode_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: SlimConfig = parameters["config"]
    return f"slim-encode-{config.run.output_dir.resolve()}-{encode_stage_key(config, parameters['data'])}"


@task(name="encode-items", cache_key_fn=_encode_key, persist_result=True, tags=["slim-encode"])
def encode_items_task(config: SlimConfig, data: DataStageResult) -> EncodeResult:
    """Item text -> vectors with the configured sentence-transformers model."""
    return encode_stage(config, data, CountProgress("encode", "item texts"))


def encode_items(config: SlimConfig, data: DataStageResult) -> EncodeResult:
    """Run the item encoding task, bypassing a cache entry whose stage folder is gone."""
    folder = RunFolder(config.run.output_dir).stage("encode", encode_stage_key(config, data))
    return encode_items_task.with_options(refresh_cache=not folder.is_complete())(config, data)


@task(
    name="encode-rationales",
    task_run_name="encode {source} rationales",
    tags=["slim-encode"],
)
def encode_rationales_task(config: SlimConfig, source: str, rationales: Path) -> RationaleVectors:
    """Rationale text -> vectors per (user, cutoff), full and per step (reused while unchanged)."""
    encoder = TextEncoder.from_config(config.encoder)
    return encode_rationales(source, rationales, RunFolder(config.run.output_dir), encoder)


@task(name="history-vectors", tags=["slim-encode"])
def history_vectors_task(
    config: SlimConfig, data: DataStageResult, encoded: EncodeResult, student: RationaleVectors
) -> RationaleVectors:
    """The `history` control: mean history text at the student's (user, cutoff) pairs."""
    return history_vectors(
        student,
        data.folder,
        encoded.item_vectors,
        encoded.key,
        student_config(config).max_history_items,
        RunFolder(config.run.output_dir),
    )


def _run_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: SlimConfig = parameters["config"]
    folder = recommender_stage_folder(
        config, parameters["data"], parameters["encoded"], parameters.get("rationales", ())
    )
    return f"slim-train-{folder.path}-{parameters['spec'].name}"


@task(
    name="train-recommender",
    task_run_name="train {spec.name}",
    cache_key_fn=_run_key,
    persist_result=True,
    tags=["slim-train"],
)
def train_recommender_task(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    spec: RunSpec,
    rationales: tuple[RationaleVectors, ...] = (),
) -> list[dict[str, Any]]:
    """Train one model run (early stopping on validation NDCG@10) and evaluate it; in a worker
    process while the flow holds `recommender.workers` of them."""
    context = TaskRunContext.get()
    ids = {} if context is None else {"flow_run_id": context.task_run.flow_run_id}
    if context is not None:
        ids["task_run_id"] = context.task_run.id
    return call(train_run, config, data, encoded, spec, rationales, log_extra=ids)


def training_task(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    spec: RunSpec,
    rationales: tuple[RationaleVectors, ...] = (),
):
    """The training task for `spec`, told to bypass a cache entry whose files on disk are gone."""
    folder = recommender_stage_folder(config, data, encoded, rationales)
    # Backbones leave a checkpoint; popularity and text matching only need the negatives.
    needed = (
        folder.file(f"checkpoints/{spec.name}.pt")
        if spec.model not in ("popularity", "text_matching")
        else folder.file("negatives.parquet")
    )
    return train_recommender_task.with_options(refresh_cache=not needed.exists())


@task(name="evaluate-recommenders", tags=["slim-evaluate"])
def evaluate_recommenders_task(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    rows: list[dict[str, Any]],
    rationales: tuple[RationaleVectors, ...] = (),
) -> RecommenderResult:
    """Collect every run into metrics.parquet, the results table and the NDCG@10 chart."""
    result = finish_recommender_stage(config, data, encoded, rows, rationales)
    create_markdown_artifact(
        key="recommender-results",
        markdown=f"# Recommenders: test split, mean ± std over seeds\n\n{protocol_note(config)}\n\n"
        f"{result.table}\n\n{embed_images('![NDCG@10](ndcg.png)', result.folder)}\n\n"
        f"Folder: `{result.folder}`\n",
        description="NDCG@10, Hit@10, Hit@20, MRR per model and variant, both protocols",
    )
    # The same numbers as a table artifact: the UI sorts and scrolls it, where the markdown
    # table overflows sideways.
    create_table_artifact(
        key="recommender-results-table",
        table=summary_records(rows),
        description="Test split, %, mean and std over seeds per model, variant and protocol",
    )
    return result
