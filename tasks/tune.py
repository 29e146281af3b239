"""`slim tune`'s trials as Prefect tasks: the search shows in the UI, a trial at a time, and runs
on Dask's workers when the configuration asks for them (the trials share the study's SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from slim_core.config import SlimConfig
from slim_core.rec.tune import TuneResult, TuneStudy, run_trial, summarise


@task(name="tune-trial", tags=["slim-tune"])
def tune_trial_task(
    config: SlimConfig, where: TuneStudy, data_folder: Path, item_vectors: Path | None
) -> dict[str, Any]:
    """Train one trial's settings; the study records its validation NDCG@10 (or its pruning)."""
    return run_trial(config, where, data_folder, item_vectors)


@task(name="tune-summary", tags=["slim-tune"])
def tune_summary_task(config: SlimConfig, where: TuneStudy) -> TuneResult:
    """The best settings as a YAML fragment and the search history as a PNG, also as an artifact."""
    result = summarise(config, where)
    create_markdown_artifact(
        key="tune-best",
        markdown=(
            f"# slim tune: {config.tuning.model} / {config.tuning.variant}\n\n"
            f"{result.finished} trials ({result.pruned} pruned); best: trial {result.best_trial}, "
            f"validation NDCG@10 {100 * result.best_value:.2f}%\n\n"
            f"```yaml\n{result.fragment}```\n\nHistory: `{result.history_png}`\n"
        ),
        description="Best recommender settings found, to paste into the configuration",
    )
    return result
