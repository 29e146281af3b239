"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from slim_core.config import SlimConfig, config_from_dict
from slim_core.data import DataStageResult, prepare_data


def make_config(output_dir: Path, source: dict[str, Any], **data: Any) -> SlimConfig:
    return config_from_dict(
        {"run": {"output_dir": str(output_dir)}, "data": {"source": source, **data}}
    )


def run_stage(output_dir: Path, source: dict[str, Any], **data: Any) -> DataStageResult:
    """Run the data stage without Prefect and return its result."""
    return prepare_data(make_config(output_dir, source, **data))


def rows(result: DataStageResult, artifact: str, order: str | None = None) -> list[dict[str, Any]]:
    """An artifact's rows as dicts."""
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{result.path(artifact)}')")
    if order:
        relation = relation.order(order)
    return [dict(zip(relation.columns, values, strict=True)) for values in relation.fetchall()]


def sequences_by_user(result: DataStageResult) -> dict[str, list[str]]:
    """user_id -> stored sequence as raw item ids."""
    items = {r["item_idx"]: r["item_id"] for r in rows(result, "items")}
    return {r["user_id"]: [items[i] for i in r["items"]] for r in rows(result, "sequences")}


def csv(header: str, *lines: str) -> str:
    return "\n".join([header, *lines]) + "\n"


def flow_run_artifact(flow_run_id: Any, key: str) -> str:
    """The markdown of the artifact `key` made by one flow run.

    The Prefect server is shared by the whole test session, so other tests' runs write artifacts
    with the same key: always filter by the flow run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert len(artifacts) == 1, f"expected one {key!r} artifact, found {len(artifacts)}"
    return str(artifacts[0].data)
