"""The task runner a configuration asks for: Prefect's default, or Dask (`run.task_runner`)."""

from __future__ import annotations

from prefect import Flow

from slim_core.config import load_config
from slim_core.errors import ConfigError


def with_task_runner(flow: Flow, config_path: str) -> Flow:
    """`flow` as configured: unchanged for the thread runner, on a Dask cluster for `dask`."""
    run = load_config(config_path).run
    if run.task_runner != "dask":
        return flow
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise ConfigError(
            "run.task_runner: dask needs prefect-dask: pip install -e '.[dask]'"
        ) from error
    if run.dask_address:
        runner = DaskTaskRunner(address=run.dask_address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": run.dask_workers,
                "threads_per_worker": 1,
                "dashboard_address": run.dask_dashboard_address,
            }
        )
    return flow.with_options(task_runner=runner)
