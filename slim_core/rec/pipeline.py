"""Stage-level functions for encoding and recommenders: keys, folders, one call per shard of work.

encode:       items.parquet -> item_vectors.parquet          (folder keyed by text + model)
recommenders: one run per (model, variant, seed) -> rows     (folder keyed by everything above
              + recommender and evaluation settings); then metrics.parquet, summary.md, ndcg.png
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slim_core.config import RecommenderConfig, SlimConfig
from slim_core.data import DataStageResult
from slim_core.encoding import TextEncoder, encode_items, item_text_key
from slim_core.rationale_vectors import RationaleVectors
from slim_core.rec import report
from slim_core.rec.stage import (
    FILE_SOURCE,
    RunSpec,
    load_inputs,
    run_one,
    run_specs,
    uses_item_vectors,
    uses_user_vectors,
    write_metrics,
)
from slim_core.runtime import Runtime
from slim_core.stages import Stage, StageHooks, run_stage
from storage import (
    RunFolder,
    StageFolder,
    canonical_hash,
    file_digest,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger("slim_core.rec")

ENCODE_STAGE_VERSION = 1
# 2: SASRec initialised as RecBole does; SRGNN. 3: SRGNN's item-text fusion initialised uniformly.
# 4: GRU4Rec's item-text fusion starts as the ID model; GRU4Rec reads `gru_layers`.
# 5: SASRec's user-side fusion starts as the backbone's state.
RECOMMENDER_STAGE_VERSION = 5


@dataclass(frozen=True)
class EncodeResult:
    folder: Path
    key: str
    facts: dict[str, Any]

    @property
    def item_vectors(self) -> Path:
        return self.folder / "item_vectors.parquet"


def user_sources(
    config: SlimConfig, rationales: Sequence[RationaleVectors] = ()
) -> dict[str, Path]:
    """User vector files by source name: the configured file, or the pipeline's rationales
    (full text as "student" / "teacher"; single steps as "student:step1" for text matching)."""
    rec = config.recommender
    if rec.user_vectors is not None:
        return {FILE_SOURCE: rec.user_vectors}
    out: dict[str, Path] = {}
    for vectors in rationales:
        if vectors.source in rec.rationales:
            for name, part in source_parts(rec, vectors.source):
                out[name] = vectors.path(part)
    return out


def source_parts(rec: RecommenderConfig, source: str) -> list[tuple[str, str]]:
    """(source name, rationale part) pairs one rationale source gives the recommenders."""
    steps = rec.text_matching and source == "student"
    parts = [p for p in rec.text_matching_parts if p != "full"] if steps else []
    return [(source, "full")] + [(f"student:{part}", part) for part in parts]


def needs_item_text(config: SlimConfig) -> bool:
    rec = config.recommender
    # the history control is made of item text vectors, whatever the variants read
    history = "history" in rec.rationales and rec.user_vectors is None and uses_user_vectors(rec)
    return uses_item_vectors(rec) or history


def needs_user_text(config: SlimConfig) -> bool:
    return uses_user_vectors(config.recommender)


def _encoder(config: SlimConfig) -> TextEncoder:
    return TextEncoder.from_config(config.encoder)


@dataclass(frozen=True)
class ItemEncoding(Stage[EncodeResult]):
    """Item text -> vectors. Inputs: the items' text and the encoder; reused while both stay."""

    config: SlimConfig
    data: DataStageResult
    name = "encode"
    task_name = "encode-items"
    tag = "slim-encode"
    progress_unit = "item texts"

    @functools.cached_property
    def key(self) -> str:
        text_key = item_text_key(self.data.path("items"))
        model = _encoder(self.config).model_id
        return canonical_hash({"version": ENCODE_STAGE_VERSION, "text": text_key, "model": model})

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        vectors = folder.file("item_vectors.parquet")
        encoder = _encoder(self.config)
        facts = encode_items(self.data.path("items"), vectors, encoder, hooks.on_progress)
        folder.write_manifest(
            {"item_vectors.parquet": {"rows": facts["rows"]}},
            facts=facts,
            encoder=self.config.encoder.model_dump(mode="json"),
            data_key=self.data.key,
        )

    def load(self, folder: StageFolder) -> EncodeResult:
        return EncodeResult(folder.path, folder.key, (folder.read_manifest() or {})["facts"])


def encode_stage(config: SlimConfig, data: DataStageResult) -> EncodeResult:
    """Item text vectors, reused while item text and encoder are unchanged."""
    return run_stage(ItemEncoding(config, data), RunFolder(config.run.output_dir))


def recommender_stage_folder(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    rationales: Sequence[RationaleVectors] = (),
) -> StageFolder:
    user_vectors = config.recommender.user_vectors
    key = canonical_hash(
        {
            "version": RECOMMENDER_STAGE_VERSION,
            "data": data.key,
            "encode": None if encoded is None else encoded.key,
            "user_vectors": None if user_vectors is None else file_digest(user_vectors),
            "rationales": {r.source: r.key for r in rationales},
            "recommender": config.recommender.result_settings(),
            "evaluation": config.evaluation.result_settings(),
        }
    )
    return RunFolder(config.run.output_dir).stage("recommenders", key)


def train_run(
    runtime: Runtime,
    config: SlimConfig,
    data_folder: Path,
    folder: Path,
    item_vectors: Path | None,
    sources: dict[str, Path],
    spec: RunSpec,
) -> list[dict[str, Any]]:
    """Train one model run into the stage `folder` and evaluate it on valid and test.

    Every run of a stage reads the same sequences, negatives and vectors: `runtime` keeps them
    for the next run (reading them again cost ~2 s a run, five rationale sources on the demo).
    """
    rec, ev = config.recommender, config.evaluation
    if rec.threads:
        import torch

        torch.set_num_threads(rec.threads)
    folder.mkdir(parents=True, exist_ok=True)
    key = canonical_hash(
        [
            rec.model_dump(mode="json"),
            ev.model_dump(mode="json"),
            *map(str, (data_folder, folder, item_vectors)),
            sorted((name, str(path)) for name, path in sources.items()),
        ]
    )
    inputs = runtime.hold(
        "recommender inputs",
        key,
        lambda: load_inputs(rec, ev, data_folder, folder, item_vectors, sources),
    )
    return run_one(spec, rec, ev, inputs, folder / "checkpoints")


@dataclass(frozen=True)
class TrainingRun(Stage[list[dict[str, Any]]]):
    """One run of the recommender stage: (model, variant, seed) trained, evaluated, its rows
    kept in `rows/<run>.json` of the stage folder that every run of the plan shares. Inputs:
    the stage's (`stage_key`, from `recommender_stage_folder`) and the run's spec."""

    runtime: Runtime
    config: SlimConfig
    data: DataStageResult
    encoded: EncodeResult | None
    rationales: tuple[RationaleVectors, ...]
    spec: RunSpec
    stage_key: str
    name = "recommenders"
    task_name = "train-recommender"
    tag = "slim-train"

    @property
    def key(self) -> str:
        return self.stage_key

    @property
    def part(self) -> str:
        return self.spec.name

    @property
    def run_name(self) -> str:
        return f"train {self.spec.name}"

    def _rows(self, folder: StageFolder) -> Path:
        return folder.file(f"rows/{self.spec.name}.json")

    def is_done(self, folder: StageFolder) -> bool:
        # Backbones leave a checkpoint; popularity and text matching only need the negatives.
        untrained = self.spec.model in ("popularity", "text_matching")
        needed = "negatives.parquet" if untrained else f"checkpoints/{self.spec.name}.pt"
        return self._rows(folder).is_file() and folder.file(needed).is_file()

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        item_vectors = None if self.encoded is None else self.encoded.item_vectors
        rows = self.runtime.call(
            train_run,
            self.config,
            self.data.folder,
            folder.path,
            item_vectors,
            user_sources(self.config, self.rationales),
            self.spec,
            log_extra=hooks.log_extra,
        )
        # Rows keep their column order (metrics.parquet's); NumPy scalars become numbers.
        text = json.dumps(rows, default=lambda value: value.item())
        write_text_atomic(self._rows(folder), text)

    def load(self, folder: StageFolder) -> list[dict[str, Any]]:
        return json.loads(self._rows(folder).read_text(encoding="utf-8"))

    def record(self, run: RunFolder, folder: StageFolder) -> None:
        pass  # the evaluation points the run at the folder, once every run is in it


def training_plan(
    runtime: Runtime,
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    rationales: tuple[RationaleVectors, ...],
) -> list[TrainingRun]:
    """One stage per planned run, all in the recommender stage's folder (its key hashed once);
    each trains in a worker process while the runtime holds `recommender.workers` of them."""
    key = recommender_stage_folder(config, data, encoded, rationales).key
    specs = run_specs(config.recommender, list(user_sources(config, rationales)))
    return [TrainingRun(runtime, config, data, encoded, rationales, spec, key) for spec in specs]


def protocol_note(config: SlimConfig) -> str:
    ev = config.evaluation
    history = "excluded from" if ev.exclude_history else "kept among"
    return (
        f"Metrics in %. Full ranking: every item is a candidate; the user's earlier items are "
        f"{history} the candidates. Sampled: the target among {ev.sampled_negatives} negatives the "
        f"user never interacted with, drawn once (seed {ev.negative_seed}). Ties count against "
        "the target."
    )


@dataclass(frozen=True)
class RecommenderResult:
    folder: Path
    rows: list[dict[str, Any]]
    table: str

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.parquet"

    @property
    def chart(self) -> Path:
        return self.folder / "ndcg.png"


def finish_recommender_stage(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    rows: list[dict[str, Any]],
    rationales: Sequence[RationaleVectors] = (),
) -> RecommenderResult:
    """Write metrics.parquet, the results table and the chart; seal the stage folder."""
    folder = recommender_stage_folder(config, data, encoded, rationales)
    write_metrics(rows, folder.file("metrics.parquet"))
    table = report.markdown_table(rows)
    title = (
        f"{config.run.name}: test split, mean ± std over {len(config.recommender.seeds)} seed(s)"
    )
    write_text_atomic(folder.file("summary.md"), f"# {title}\n\n{protocol_note(config)}\n\n{table}")
    report.ndcg_bar_chart(rows, folder.file("ndcg.png"), title=config.run.name)
    write_json_atomic(
        folder.file("settings.json"),
        {
            "recommender": config.recommender.model_dump(mode="json"),
            "evaluation": config.evaluation.result_settings(),
        },
    )
    folder.write_manifest(
        {
            name: {}
            for name in (
                "metrics.parquet",
                "summary.md",
                "ndcg.png",
                "negatives.parquet",
                "settings.json",
            )
        },
        data_key=data.key,
        encode_key=None if encoded is None else encoded.key,
        runs=len(rows),
    )
    RunFolder(config.run.output_dir).record_stage(folder)
    return RecommenderResult(folder.path, rows, table)


def load_recommender_result(config: SlimConfig) -> RecommenderResult | None:
    """The run's current recommender results, if any (for `slim evaluate`)."""
    folder = RunFolder(config.run.output_dir).current("recommenders")
    if folder is None:
        return None
    import duckdb

    with duckdb.connect() as con:
        result = con.execute("SELECT * FROM read_parquet(?)", [str(folder.file("metrics.parquet"))])
        columns = [column[0] for column in result.description]
        rows = [dict(zip(columns, values, strict=True)) for values in result.fetchall()]
    return RecommenderResult(folder.path, rows, report.markdown_table(rows))


__all__ = [
    "EncodeResult",
    "RunSpec",
    "RecommenderResult",
    "ItemEncoding",
    "encode_stage",
    "run_specs",
    "train_run",
    "TrainingRun",
    "training_plan",
    "finish_recommender_stage",
    "load_recommender_result",
    "needs_item_text",
    "needs_user_text",
    "user_sources",
]
