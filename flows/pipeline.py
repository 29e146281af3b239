"""SLIM's main flow: every stage in order, each a cached task, from raw files to a report.

For now the pipeline has its first stage, data preparation; later stages chain after it.
"""

from __future__ import annotations

from prefect import flow

import tasks  # noqa: F401  (logging setup before Prefect runs anything)
from slim_core.config import SlimConfig, load_config
from slim_core.data import DataStageResult
from storage import RunFolder
from tasks.data import run_prepare_data


def _load(config_path: str) -> SlimConfig:
    """Validate the configuration and save it, resolved, beside the run's outputs."""
    config = load_config(config_path)
    RunFolder(config.run.output_dir).save_config(config.to_yaml())
    return config


@flow(name="slim-prepare", flow_run_name="prepare {config_path}")
def prepare_flow(config_path: str) -> DataStageResult:
    """Data stage only: raw files -> interactions, items, sequences."""
    return run_prepare_data(_load(config_path)).result()


@flow(name="slim-pipeline", flow_run_name="slim {config_path}")
def slim_pipeline(config_path: str) -> dict[str, DataStageResult]:
    """The whole pipeline for one configuration file."""
    config = _load(config_path)
    data = run_prepare_data(config).result()
    return {"data": data}
