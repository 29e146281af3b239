"""Retention on the Prefect side: delete this run folder's finished flow runs (with their task
runs, logs and artifacts) that started before a cutoff. Prefect keeps everything forever
otherwise.

Only SLIM's own runs of this `output_dir` are candidates: the flow run ids its run manifests
(`flow-runs/*.json`) name, in a final state. Other projects' runs on a shared server, and runs
still going, are never touched; nor are teacher answers and student generations (paid for).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

PAGE = 200
FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]


@dataclass
class PruneReport:
    flow_runs: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)


def own_flow_runs(output_dir: str | Path) -> list[UUID]:
    """The flow runs whose run manifests are in this run folder."""
    ids = set()
    for path in (Path(output_dir) / "flow-runs").glob("*.json"):
        try:
            ids.add(UUID(json.loads(path.read_text(encoding="utf-8"))["flow_run_id"]))
        except (ValueError, KeyError, TypeError):
            continue  # a local run without an id, or a file that is not a manifest
    return sorted(ids)


def prune_prefect(output_dir: str | Path, before: datetime, dry_run: bool = False) -> PruneReport:
    report = PruneReport()
    candidates = own_flow_runs(output_dir)
    if not candidates:
        return report
    with get_client(sync_client=True) as client:
        old_runs = []
        for start in range(0, len(candidates), PAGE):
            old_runs += client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=candidates[start : start + PAGE]),
                    start_time=FlowRunFilterStartTime(before_=before),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINAL)),
                ),
                limit=PAGE,
            )
        run_ids = [run.id for run in old_runs]
        for start in range(0, len(run_ids), PAGE):
            offset = 0
            while True:  # the API pages at 200
                page = client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=run_ids[start : start + PAGE])
                    ),
                    limit=PAGE,
                    offset=offset,
                )
                report.artifacts += [str(artifact.id) for artifact in page]
                if len(page) < PAGE:
                    break
                offset += PAGE
        if not dry_run:
            for artifact_id in report.artifacts:
                client.delete_artifact(artifact_id)
            for run_id in run_ids:
                client.delete_flow_run(run_id)
        report.flow_runs = [str(run_id) for run_id in run_ids]
    return report
