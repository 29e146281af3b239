"""The Stage protocol: one shape for every content-keyed step of the pipeline.

A stage declares its inputs (the fields of its object), its key (a content hash of those
inputs, its settings and its code version) and how to compute its folder and read its result
back. The folder is the single source of truth: a finished one (sealed by its manifest, or by
the file a stage writes last) is reused and never recomputed, and the orchestrator's cache
(Prefect's, in `tasks/stage.py`) is keyed by the same key and holds nothing but the folder's
path.

    result = run_stage(DataStage(config.data), RunFolder(config.run.output_dir))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from storage import RunFolder, StageFolder

log = logging.getLogger("slim_core.storage")

R = TypeVar("R")


@dataclass(frozen=True)
class Artifact:
    """What a stage shows about its result, as markdown."""

    key: str
    description: str
    markdown: str


@dataclass
class StageHooks:
    """What the orchestrator lends a running stage: a progress callback `(done, total)` and
    fields for the log records a worker process writes (so a run's log shows them)."""

    on_progress: Callable[[int, int], None] | None = None
    log_extra: dict[str, Any] = field(default_factory=dict)


class Stage(Generic[R]):
    """A content-keyed stage. Subclasses set `name` and define `key`, `run` and `load`."""

    name: str  # the stage's folder under the run folder ("data", "encode", ...)
    task_name: str  # what the orchestrator calls it ("prepare-data", ...)
    tag: str  # the orchestrator's tag for a concurrency limit ("slim-data", ...)
    progress_unit: str | None = None  # what `on_progress` counts, if the stage reports it

    @property
    def key(self) -> str:
        """Content hash of the inputs, the settings and the code version (computed once)."""
        raise NotImplementedError

    @property
    def part(self) -> str:
        """One piece of a folder that several runs share (a training run), else ''."""
        return ""

    @property
    def run_name(self) -> str:
        return self.task_name

    def folder(self, run: RunFolder) -> StageFolder:
        return run.stage(self.name, self.key)

    def is_done(self, folder: StageFolder) -> bool:
        return folder.is_complete()

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        """Compute the stage into `folder` and seal it (no cache check)."""
        raise NotImplementedError

    def load(self, folder: StageFolder) -> R:
        """The result, read from the finished folder."""
        raise NotImplementedError

    def record(self, run: RunFolder, folder: StageFolder) -> None:
        """Point the run at the done folder as the stage's current output."""
        run.record_stage(folder)

    def artifacts(self, folder: StageFolder) -> list[Artifact]:
        """What the orchestrator shows about the folder the stage just computed."""
        return []


def compute(stage: Stage, run: RunFolder, hooks: StageHooks | None = None) -> StageFolder:
    """The stage's folder: reused when done, else computed."""
    folder = stage.folder(run)
    if stage.is_done(folder):
        log.info("%s: inputs unchanged, reusing %s", stage.run_name, folder.path)
    else:
        stage.run(folder, hooks or StageHooks())
    return folder


def run_stage(stage: Stage[R], run: RunFolder, hooks: StageHooks | None = None) -> R:
    """The stage's result, its folder reused or computed; the run then points at it."""
    compute(stage, run, hooks)
    return finished(stage, run)


def finished(stage: Stage[R], run: RunFolder) -> R:
    """The done stage's result, read from its folder, which the run now points at."""
    folder = stage.folder(run)
    stage.record(run, folder)
    return stage.load(folder)
