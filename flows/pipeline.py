"""SLIM's main flow: every stage in order, each a cached task, from raw files to a report.

For now the pipeline has its first stage, data preparation; later stages chain after it.
"""

from __future__ import annotations

from prefect import flow

import tasks  # noqa: F401  (logging setup before Prefect runs anything)
from slim_core.config import SlimConfig, load_config
from slim_core.data import DataStageResult
from slim_core.rec.pipeline import RecommenderResult, needs_item_text, run_specs
from storage import RunFolder
from tasks.data import run_prepare_data
from tasks.recommend import encode_items_task, evaluate_recommenders_task, run_training


def _load(config_path: str) -> SlimConfig:
    """Validate the configuration and save it, resolved, beside the run's outputs."""
    config = load_config(config_path)
    RunFolder(config.run.output_dir).save_config(config.to_yaml())
    return config


@flow(name="slim-prepare", flow_run_name="prepare {config_path}")
def prepare_flow(config_path: str) -> DataStageResult:
    """Data stage only: raw files -> interactions, items, sequences."""
    return run_prepare_data(_load(config_path)).result()


def _recommenders(config: SlimConfig, data: DataStageResult) -> RecommenderResult:
    encoded = encode_items_task(config, data) if needs_item_text(config) else None
    rows = [row for spec in run_specs(config) for row in run_training(config, data, encoded, spec)]
    return evaluate_recommenders_task(config, data, encoded, rows)


@flow(name="slim-train", flow_run_name="train {config_path}")
def train_flow(config_path: str) -> dict[str, object]:
    """Data, item encoding and every recommender run, evaluated under both protocols."""
    config = _load(config_path)
    data = run_prepare_data(config).result()
    return {"data": data, "recommenders": _recommenders(config, data)}


@flow(name="slim-pipeline", flow_run_name="slim {config_path}")
def slim_pipeline(config_path: str) -> dict[str, object]:
    """The whole pipeline for one configuration file (so far: data and recommenders)."""
    config = _load(config_path)
    data = run_prepare_data(config).result()
    return {"data": data, "recommenders": _recommenders(config, data)}
