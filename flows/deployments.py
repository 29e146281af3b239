"""Deployments of SLIM's flows: the main pipeline, scheduled regeneration, retry of failed
teacher prompts. `slim serve -c CONFIG` serves all three from one process; `prefect.yaml`
declares the same three for a work pool and its workers.

Parameters users change per run (in the UI or `prefect deployment run`): `config_path`; other
settings (users, budget, ...) are configuration fields, overridable per deployment through
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
    parameters = {"config_path": config_path}
    return [
        slim_pipeline.to_deployment(
            name=f"pipeline-{stem}",
            parameters=parameters,
            description="The whole pipeline, data to report; cached stages are reused.",
            tags=["slim"],
        ),
        regenerate_flow.to_deployment(
            name=f"regenerate-{stem}",
            parameters=parameters,
            cron=regenerate_cron,
            description="Rationales only for users whose history changed (scheduled).",
            tags=["slim"],
        ),
        retry_failed_flow.to_deployment(
            name=f"retry-failed-{stem}",
            parameters=parameters,
            description="Replay exactly the teacher prompts in the dead-letter table.",
            tags=["slim"],
        ),
    ]
