"""The data stage as a Prefect task: the generic stage task, run on the data settings.

A rerun with the same input files and settings is a cache hit; any change recomputes; a stage
folder that is gone or incomplete is computed again (tasks/stage.py).
"""

from __future__ import annotations

from slim_core.config import SlimConfig
from slim_core.data import DataStage, DataStageResult
from tasks.stage import run_stage_task


def run_prepare_data(config: SlimConfig) -> DataStageResult:
    """Ingest the raw files and build sequences (or reuse them); publishes a summary artifact."""
    return run_stage_task(DataStage(config.data), config.run.output_dir)
