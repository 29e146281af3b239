"""`slim tune`: hyper-parameter search for one backbone, each trial a Prefect task.

Data and item vectors come from the same cached tasks as `slim train`; the study (Optuna, SQLite
in the run folder) counts finished trials, so a rerun after a kill runs only what is missing.
"""

from __future__ import annotations

from prefect import flow

from flows.identity import one_run_per_folder, run_name
from flows.pipeline import TRACED, _each, _load
from slim_core.config import SlimConfig
from slim_core.rec.tune import TuneResult, finished_trials, open_study, tune_study
from tasks.data import run_prepare_data
from tasks.progress import StageProgress
from tasks.recommend import encode_items
from tasks.tune import tune_summary_task, tune_trial_task


@flow(name="slim-tune", flow_run_name=run_name("tune"), **TRACED)
@one_run_per_folder
def tune_flow(config_path: str, trials: int | None = None) -> TuneResult:
    """Search `tune.space` until the study has `trials` finished trials (default: tune.trials)."""
    config: SlimConfig = _load(config_path, stages=("data", "encode", "tune"))
    wanted = trials or config.tuning.trials
    data = run_prepare_data(config)
    encoded = encode_items(config, data) if config.tuning.variant == "item_text" else None
    where = tune_study(config, data.key, None if encoded is None else encoded.key)
    missing = max(0, wanted - finished_trials(open_study(where, config)))
    item_vectors = None if encoded is None else encoded.item_vectors
    trials_left = [(tune_trial_task, (config, where, data.folder, item_vectors))] * missing
    _each(config, trials_left, progress=StageProgress("tune", missing, "trials"))
    return tune_summary_task(config, where)
