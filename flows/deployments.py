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

from flows.pipeline import regenerate_flow, retry_failed_flow, slim_pipeline

DEFAULT_REGENERATE_CRON = "0 3 * * *"


def deployments(
    config_path: str | Path, regenerate_cron: str | None = DEFAULT_REGENERATE_CRON
) -> list[RunnerDeployment]:
    """The three deployments for one configuration file (names carry the file's stem)."""
    config_path = str(Path(config_path).resolve())
    stem = Path(config_path).stem
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
            name=f"{name}-{stem}",
            parameters={"config_path": config_path},
            cron=cron,
            description=description,
            tags=["slim"],
        )
        for flow, name, cron, description in flows
    ]
