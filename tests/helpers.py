"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import yaml

from slim_core.config import SlimConfig, config_from_dict
from slim_core.data import DataStageResult, prepare_data

REPO = Path(__file__).resolve().parents[1]


def make_config(output_dir: Path, source: dict[str, Any], **data: Any) -> SlimConfig:
    return config_from_dict(
        {"run": {"output_dir": str(output_dir)}, "data": {"source": source, **data}}
    )


def run_stage(output_dir: Path, source: dict[str, Any], **data: Any) -> DataStageResult:
    """Run the data stage without Prefect and return its result."""
    return prepare_data(make_config(output_dir, source, **data))


def rows(result: DataStageResult, artifact: str, order: str | None = None) -> list[dict[str, Any]]:
    """An artifact's rows as dicts."""
    relation = duckdb.read_parquet(str(result.path(artifact)))
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


def demo_config(
    tmp_path: Path, name: str = "c.yaml", recommender: dict | None = None, **data
) -> Path:
    """configs/demo.yaml with absolute data paths and a private output folder; without its LLM
    stages (tests/test_pipeline_e2e.py runs those with tiny models)."""
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    config.pop("teacher", None)
    config.pop("student", None)
    config["recommender"]["variants"] = ["id", "item_text"]
    config["recommender"]["text_matching"] = False
    source = config["data"]["source"]
    for key in ("item_text", "item_index", "user_index"):
        source[key] = str(REPO / source[key])
    source["sequences"] = [str(REPO / p) for p in source["sequences"]]
    config["run"]["output_dir"] = str(tmp_path / "run")
    config["data"].update(data)
    config["recommender"].update(recommender or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path
