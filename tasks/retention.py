"""Retention on the Prefect side: delete flow runs (with their task runs and logs) that started
before a cutoff, and artifacts created before it. Prefect keeps everything forever otherwise.

Teacher answers and student generations are never touched: they were paid for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

PAGE = 200


@dataclass
class PruneReport:
    flow_runs: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)


def prune_prefect(before: datetime, dry_run: bool = False) -> PruneReport:
    report = PruneReport()
    with get_client(sync_client=True) as client:
        old_runs = set()
        offset = 0
        while True:  # the API pages at 200
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(before_=before)),
                limit=PAGE,
                offset=offset,
            )
            old_runs |= {run.id for run in runs}
            if len(runs) < PAGE:
                break
            offset += PAGE
        offset = 0
        while True:
            page = client.read_artifacts(limit=PAGE, offset=offset)
            if not page:
                break
            for artifact in page:
                created = artifact.created
                if artifact.flow_run_id in old_runs or (created is not None and created < before):
                    report.artifacts.append(str(artifact.id))
            offset += PAGE
        if not dry_run:
            for artifact_id in report.artifacts:
                client.delete_artifact(artifact_id)
            for run_id in old_runs:
                client.delete_flow_run(run_id)
        report.flow_runs = [str(r) for r in old_runs]
    return report
