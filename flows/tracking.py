"""MLflow tracking around a flow (`tracking.mlflow: true`): what `slim_core.tracking` logs,
taken from the flow's results when it ends."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from prefect.runtime import flow_run

from flows.identity import RESOLVED_PARAMETERS, resolve
from slim_core.tracking import tracked_run

RESULT_FILES = ("metrics.parquet", "summary.md", "ndcg.png", "settings.json")
REPORT_FILES = ("report.md", "ndcg.png", "sparsity.png")


def tracked(without_llm: bool = False) -> Callable[[Callable], Callable]:
    """For a flow's function whose first parameter is `config_path` and whose result holds
    `recommenders` (and `report`): one MLflow run around it, named as the flow run, with the
    settings the run resolved (its parameters applied; `without_llm` for `slim train`)."""

    def decorator(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def tracking(*args: Any, **kwargs: Any) -> Any:
            given = signature.bind(*args, **kwargs).arguments
            accepted = {k: v for k, v in given.items() if k in RESOLVED_PARAMETERS}
            config = resolve(**accepted, without_llm=without_llm)
            if not config.tracking.mlflow:
                return function(*args, **kwargs)
            with tracked_run(config, flow_run.name or config.run.name) as tracker:
                result = function(*args, **kwargs)
                recommenders = result.get("recommenders")
                if recommenders is not None:
                    tracker.log_recommender_runs(recommenders.rows)
                    tracker.log_files(recommenders.folder, RESULT_FILES, "recommenders")
                report = result.get("report")
                if report is not None:
                    tracker.log_files(report.folder, REPORT_FILES, "report")
                return result

        return tracking

    return decorator
