"""What a run would do, without doing it (`slim run --dry-run`, `slim train --dry-run`).

Each stage is marked cached or to compute where that can be known before running: the data
stage by its key, and the teacher prompt by prompt from its answer cache (with the calls and
the most they would cost at the configured prices). The later stages' keys depend on what the
earlier ones produce, so they are counted, not judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from slim_core.config import SlimConfig, uses_user_vectors
from slim_core.data import DataStageResult
from slim_core.data.ingest import input_files
from slim_core.data.stage import data_stage_key
from storage import RunFolder


@dataclass(frozen=True)
class PlannedStage:
    stage: str
    status: str  # cached | to compute | N of M cached | decided when run
    work: str


def plan(config: SlimConfig, llm: bool = True) -> list[PlannedStage]:
    """The stages `slim run` (`llm`) or `slim train` would run, in order."""
    run = RunFolder(config.run.output_dir)
    folder = run.stage("data", data_stage_key(config.data))
    data = None
    if folder.is_complete():
        stats = json.loads(folder.file("stats.json").read_text(encoding="utf-8"))
        data = DataStageResult(folder=folder.path, key=folder.key, stats=stats)
    files = len(input_files(config.data.source))
    rows = [
        PlannedStage(
            "data", "cached" if data else "to compute", f"{files} input file(s) -> sequences"
        )
    ]
    if llm and config.teacher is not None:
        rows.append(_teacher(config, data))
    if llm and config.student is not None:
        rows.append(_student(config, data))
    rows.append(_recommenders(config, llm))
    return rows


def _teacher(config: SlimConfig, data: DataStageResult | None) -> PlannedStage:
    from slim_core.teacher.run import estimated_tokens
    from slim_core.teacher.stage import answer_cache, prices, prompt_keys, teacher_prompts

    cfg = config.teacher
    if data is None:
        return PlannedStage(
            "teacher", "decided when run", f"{cfg.users} users x {len(cfg.cutoffs)} cutoffs"
        )
    prompts = teacher_prompts(config, data)
    model_id = _teacher_model_id(config)
    answered = answer_cache(config).answered_keys() if model_id else set()
    missing = (
        [
            p
            for p, key in zip(prompts, prompt_keys(prompts, model_id, cfg), strict=True)
            if key not in answered
        ]
        if model_id
        else prompts
    )
    calls = len(missing) * cfg.samples
    tokens_in = sum(estimated_tokens(p.text) for p in missing) * cfg.samples
    most = prices(cfg).cost(tokens_in, calls * cfg.max_tokens)
    status = f"{len(prompts) - len(missing)} of {len(prompts)} prompts cached"
    work = f"{calls} LLM calls, at most ${most:.4f} at the configured prices"
    if model_id is None:
        work += " (model not fetched yet: no answer can be cached)"
    return PlannedStage("teacher", status, work)


def _teacher_model_id(config: SlimConfig) -> str | None:
    """The id the answer cache keys by, or None for a model not on disk yet (asking for the id
    must not start a download)."""
    from slim_core.errors import ConfigError
    from slim_core.model_files import SHIPPED_MODELS, is_hub_id
    from slim_core.teacher.stage import make_backend

    cfg = config.teacher
    fetched = cfg.backend == "transformers" and (
        cfg.model in SHIPPED_MODELS or is_hub_id(cfg.model)
    )
    try:  # a placeholder key: the id names the model, and nothing is sent
        return make_backend(cfg, api_key="dry-run", local_only=True).model_id
    except ConfigError:
        if not fetched:
            raise  # a configuration error, not a model still to fetch
        return None


def _student(config: SlimConfig, data: DataStageResult | None) -> PlannedStage:
    cfg = config.student
    if data is None:
        return PlannedStage("student", "decided when run", "fine-tuning, then every user")
    from slim_core.student.inference import student_prompts

    prompts = student_prompts(cfg, data, config.data.domain)
    return PlannedStage(
        "student",
        "decided when run",
        f"fine-tuning (reused while the teacher's answers are unchanged), then {len(prompts)} "
        "rationales (those on disk are reused)",
    )


def _recommenders(config: SlimConfig, llm: bool) -> PlannedStage:
    from slim_core.rec.pipeline import source_parts
    from slim_core.rec.stage import FILE_SOURCE, run_specs

    rec = config.recommender
    sources: list[str] = []
    if rec.user_vectors is not None:
        sources = [FILE_SOURCE]
    elif llm and uses_user_vectors(rec):
        sources = [name for source in rec.rationales for name, _ in source_parts(rec, source)]
    specs = run_specs(rec, sources) if sources or not uses_user_vectors(rec) else []
    return PlannedStage(
        "recommenders",
        "decided when run",
        f"{len(specs)} training runs (each reused while its inputs are unchanged)",
    )


def markdown(rows: list[PlannedStage]) -> str:
    lines = ["| stage | status | work |", "|---|---|---|"]
    lines += [f"| {r.stage} | {r.status} | {r.work} |" for r in rows]
    return "\n".join(lines)
