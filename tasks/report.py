"""The report as a Prefect task: report.md and its plots in the run folder, and as an artifact.

Cheap (it reads metric rows and a few Parquet files), so it runs every time instead of being
cached: a rerun's report always shows the run's current results.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from slim_core.config import SlimConfig
from slim_core.data import DataStageResult
from slim_core.errors import DataError
from slim_core.rationale_score import markdown_table, score_run, shown_history_items
from slim_core.rec.data import load_sequence_data
from slim_core.rec.pipeline import RecommenderResult, protocol_note
from slim_core.report import ZERO_SHOT_NOTE, Report, write_report
from slim_core.student.inference import StudentInferenceResult
from slim_core.student.stage import StudentModel, quality_markdown
from slim_core.teacher.stage import TeacherStageResult
from storage import RunFolder

log = logging.getLogger("slim_core.report")


def embed_images(markdown: str, folder: Path) -> str:
    """Inline the PNGs a markdown file links (`![x](name.png)`) as data URIs: the Prefect UI
    then shows the plots in the artifact itself, with no file server."""

    def inline(match: re.Match[str]) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)", inline, markdown)


@task(name="report", tags=["slim-report"])
def report_task(
    config: SlimConfig,
    data: DataStageResult,
    recommenders: RecommenderResult,
    teacher: TeacherStageResult | None = None,
    student_model: StudentModel | None = None,
    student: StudentInferenceResult | None = None,
    timings: dict[str, float] | None = None,
) -> Report:
    """Results, SLIM's improvement, sparsity groups, cost and latency, zero-shot rationale
    scores, example rationales."""
    zero_shot = _zero_shot(config)
    report = write_report(
        config.run.output_dir / "report",
        title=f"SLIM report: {config.run.name}",
        rows=recommenders.rows,
        data=load_sequence_data(data.folder),
        protocol_note=protocol_note(config),
        teacher=None if teacher is None else teacher.summary,
        teacher_file=None if teacher is None else teacher.rationales,
        student=None if student is None else student.summary,
        student_file=None if student is None else student.rationales,
        quality=None if student_model is None else quality_markdown(student_model.quality),
        zero_shot=zero_shot,
        timings=timings,
    )
    if zero_shot and student_model is not None:  # the fine-tuning's artifact, completed
        create_markdown_artifact(
            key="student-quality",
            markdown=f"# Student quality\n\n{quality_markdown(student_model.quality)}\n\n"
            f"## Rationales scored zero-shot (NDCG@10, %)\n\n{ZERO_SHOT_NOTE}\n\n{zero_shot}\n",
            description="Held-out quality against the teacher, and every rationale's zero-shot score",
        )
    create_markdown_artifact(
        key="slim-report",
        markdown=embed_images(report.markdown, report.folder) + f"\n\nFolder: `{report.folder}`\n",
        description="Every variant under both protocols, SLIM's gain, sparsity, cost, examples",
    )
    return report


def _zero_shot(config: SlimConfig) -> str | None:
    """The zero-shot table of the run's rationales, or None when the run has none."""
    shown = shown_history_items(config)
    if not shown:
        return None
    try:
        return markdown_table(score_run(RunFolder(config.run.output_dir), shown))
    except DataError:  # no rationale vectors in this run (no LLM variants)
        return None
    except Exception as error:  # a report section must not fail the run at its last step
        log.warning("zero-shot rationale scores left out of the report: %s", error)
        return None
