"""Progress artifacts: how far a long stage has got, in the Prefect UI while it runs.

Teacher batches, student shards, recommender runs, tuning trials and encoded item texts each
move their stage's bar (`<stage>-progress` in the run's artifacts); a terminal shows bars of
its own.
"""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class StageProgress:
    """One stage's progress artifact: `advance()` after each finished unit of work."""

    def __init__(self, stage: str, total: int, unit: str) -> None:
        self.stage, self.total, self.unit, self.done = stage, max(total, 0), unit, 0
        self.artifact_id = create_progress_artifact(
            progress=0.0 if self.total else 100.0,
            key=f"{stage}-progress",
            description=self._describe(),
        )

    def _describe(self) -> str:
        return f"{self.stage}: {self.done} of {self.total} {self.unit} done"

    def advance(self, units: int = 1) -> None:
        self.done = min(self.total, self.done + units)
        update_progress_artifact(
            self.artifact_id,
            progress=100.0 * self.done / self.total if self.total else 100.0,
            description=self._describe(),
        )


class CountProgress:
    """A callback `(done, total)` for slim_core code that knows its total only once it starts
    (texts to encode): the artifact is made on the first call."""

    def __init__(self, stage: str, unit: str) -> None:
        self.stage, self.unit = stage, unit
        self.progress: StageProgress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            self.progress = StageProgress(self.stage, total, self.unit)
        self.progress.advance(done - self.progress.done)
