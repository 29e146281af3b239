"""Deployments of SLIM's flows: the main pipeline, scheduled regeneration, retry of failed
teacher prompts. `slim serve -c CONFIG` serves all three from one process; `prefect.yaml`
declares the same three for a work pool and its workers.

Parameters users change per run (in the UI or `prefect deployment run`): `config_path`, and the
flows' optional `teacher_users`, `student_users`, `budget_usd`; any other setting through
`SLIM_*` environment variables in the work pool's job variables.
"""

from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.pipeline import regenerate_flow, retry_failed_flow, slim_pipeline

DEFAULT_REGENERATE_CRON = "0 3 * * *"
DEFAULT_TIMEZONE = "UTC"  # explicit: a cron without one runs at the server's local time


def deployment_name(kind: str, config_path: str | Path) -> str:
    """`pipeline-demo` for configs/demo.yaml: the same names from `slim serve` and prefect.yaml."""
    return f"{kind}-{Path(config_path).stem}"


def regenerate_schedule(cron: str, timezone: str = DEFAULT_TIMEZONE) -> Cron:
    return Cron(cron, timezone=timezone)


def deployments(
    config_path: str | Path,
    regenerate_cron: str | None = DEFAULT_REGENERATE_CRON,
    timezone: str = DEFAULT_TIMEZONE,
) -> list[RunnerDeployment]:
    """The three deployments for one configuration file (names carry the file's stem)."""
    config_path = str(Path(config_path).resolve())
    flows = [
        (
            slim_pipeline,
            "pipeline",
            None,
            "The whole pipeline, data to report; cached stages are reused.",
        ),
        (
            regenerate_flow,
            "regenerate",
            regenerate_cron,
            "Rationales only for users whose history changed (scheduled).",
        ),
        (
            retry_failed_flow,
            "retry-failed",
            None,
            "Replay exactly the teacher prompts in the dead-letter table.",
        ),
    ]
    return [
        flow.to_deployment(
            name=deployment_name(name, config_path),
            parameters={"config_path": config_path},
            schedules=[regenerate_schedule(cron, timezone)] if cron else None,
            description=description,
            tags=["slim"],
        )
        for flow, name, cron, description in flows
    ]
