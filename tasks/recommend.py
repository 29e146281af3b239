"""Encoding, recommender training and evaluation: stages for the generic stage task, and the
task that evaluates the runs.

Item encoding, each source's rationale encoding, the history control and every training run
(one per model, variant and seed) are content-keyed stages (tasks/stage.py): a rerun reuses
each while nothing it depends on changes. The evaluation collects the runs' rows into the
results table, chart and artifacts.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult
from slim_core.encoding import TextEncoder
from slim_core.rationale_score import HistoryControl
from slim_core.rationale_vectors import RationaleEncoding, RationaleVectors
from slim_core.rec.pipeline import (
    EncodeResult,
    ItemEncoding,
    RecommenderResult,
    finish_recommender_stage,
    protocol_note,
)
from slim_core.rec.report import summary_records
from slim_core.student.stage import student_config
from tasks.report import embed_images
from tasks.stage import run_stage_task


def encode_items(config: SlimConfig, data: DataStageResult) -> EncodeResult:
    """Item text -> vectors with the configured sentence-transformers model (or reused)."""
    return run_stage_task(ItemEncoding(config, data), config.run.output_dir)


def rationale_encoding(config: SlimConfig, source: str, rationales: Path) -> RationaleEncoding:
    """Rationale text -> vectors per (user, cutoff), full and per step (reused while unchanged)."""
    return RationaleEncoding(source, rationales, partial(TextEncoder.from_config, config.encoder))


def history_control(
    config: SlimConfig, data: DataStageResult, encoded: EncodeResult, student: RationaleVectors
) -> RationaleVectors:
    """The `history` control: mean history text at the student's (user, cutoff) pairs."""
    stage = HistoryControl(
        student,
        data.folder,
        encoded.item_vectors,
        encoded.key,
        student_config(config).max_history_items,
    )
    return run_stage_task(stage, config.run.output_dir)


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
