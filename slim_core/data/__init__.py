"""The data stage: ingestion from several formats and sequence building in DuckDB."""

from slim_core.data.stage import (
    DataStage,
    DataStageResult,
    data_stage_key,
    prepare_data,
    summary_rows,
)

__all__ = ["DataStage", "DataStageResult", "data_stage_key", "prepare_data", "summary_rows"]
