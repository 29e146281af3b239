"""The data stage as a cached Prefect task.

The cache key is the data stage's own key (input file contents + data settings + stage version)
and the output folder: a rerun with the same inputs is a cache hit, any change recomputes. When
the stage folder on disk is missing or incomplete the cached result would point at nothing, so
the task then refreshes its cache instead of trusting it.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.states import State

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult, data_stage_key, prepare_data, summary_rows
from storage import RunFolder, canonical_hash


def _data_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    config: SlimConfig = parameters["config"]
    return f"slim-data-{canonical_hash(str(config.run.output_dir.resolve()), 8)}-{data_stage_key(config.data)}"


@task(name="prepare-data", cache_key_fn=_data_cache_key, persist_result=True, tags=["slim-data"])
def prepare_data_task(config: SlimConfig) -> DataStageResult:
    """Ingest the raw files and build sequences; publish a summary artifact."""
    result = prepare_data(config)
    rows = "\n".join(f"| {label} | {value} |" for label, value in summary_rows(result.stats))
    create_markdown_artifact(
        key="data-summary",
        markdown=f"# Data stage\n\nFolder: `{result.folder}`\n\n| | |\n|---|---|\n{rows}\n",
        description="Users, items, interactions and sequence lengths after filtering",
    )
    return result


def run_prepare_data(config: SlimConfig) -> State:
    """Call the task, bypassing a cache entry whose stage folder is gone (returns the state)."""
    folder = RunFolder(config.run.output_dir).stage("data", data_stage_key(config.data))
    refresh = not folder.is_complete()
    return prepare_data_task.with_options(refresh_cache=refresh)(config, return_state=True)
