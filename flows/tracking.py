"""MLflow tracking around a flow (`tracking.mlflow: true`): what `slim_core.tracking` logs,
taken from the flow's results when it ends."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect.runtime import flow_run

from flows.identity import resolve
from slim_core.tracking import tracked_run


def tracked(function: Callable) -> Callable:
    """For a flow's function whose first parameter is `config_path` and whose result holds
    `recommenders` (and `report`): one MLflow run around it, named as the flow run."""

    @functools.wraps(function)
    def tracking(config_path: str, *args: Any, **kwargs: Any) -> Any:
        config = resolve(config_path)
        if not config.tracking.mlflow:
            return function(config_path, *args, **kwargs)
        with tracked_run(config, flow_run.name or config.run.name) as tracker:
            result = function(config_path, *args, **kwargs)
            recommenders = result.get("recommenders")
            if recommenders is not None:
                tracker.log_recommender_runs(recommenders.rows)
                tracker.log_folder(recommenders.folder, "recommenders")
            report = result.get("report")
            if report is not None:
                tracker.log_folder(report.folder, "report")
            return result

    return tracking
