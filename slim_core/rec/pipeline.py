"""Stage-level functions for encoding and recommenders: keys, folders, one call per shard of work.

encode:       items.parquet -> item_vectors.parquet          (folder keyed by text + model)
recommenders: one run per (model, variant, seed) -> rows     (folder keyed by everything above
              + recommender and evaluation settings); then metrics.parquet, summary.md, ndcg.png
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slim_core.config import EvalConfig, RecommenderConfig, SlimConfig
from slim_core.data import DataStageResult
from slim_core.encoding import TextEncoder, encode_items, item_text_key
from slim_core.rationale_vectors import RationaleVectors
from slim_core.rec import report
from slim_core.rec.stage import (
    FILE_SOURCE,
    RunSpec,
    StageInputs,
    load_inputs,
    run_one,
    run_specs,
    uses_item_vectors,
    uses_user_vectors,
    write_metrics,
)
from storage import (
    RunFolder,
    StageFolder,
    canonical_hash,
    file_fingerprint,
    write_json_atomic,
    write_text_atomic,
)

log = logging.getLogger("slim_core.rec")

ENCODE_STAGE_VERSION = 1
RECOMMENDER_STAGE_VERSION = 2  # 2: SASRec initialised as RecBole does; SRGNN


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


def encode_stage_key(config: SlimConfig, data: DataStageResult) -> str:
    text_key = item_text_key(data.path("items"))
    return canonical_hash(
        {"version": ENCODE_STAGE_VERSION, "text": text_key, "model": _encoder(config).model_id}
    )


def encode_stage(
    config: SlimConfig,
    data: DataStageResult,
    on_progress: Callable[[int, int], None] | None = None,
) -> EncodeResult:
    """Item text vectors, reused while item text and encoder are unchanged."""
    folder = RunFolder(config.run.output_dir).stage("encode", encode_stage_key(config, data))
    if not folder.is_complete():
        facts = encode_items(
            data.path("items"), folder.file("item_vectors.parquet"), _encoder(config), on_progress
        )
        folder.write_manifest(
            {"item_vectors.parquet": {"rows": facts["rows"]}},
            facts=facts,
            encoder=config.encoder.model_dump(mode="json"),
            data_key=data.key,
        )
    RunFolder(config.run.output_dir).record_stage(folder)
    manifest = folder.read_manifest() or {}
    return EncodeResult(folder.path, folder.key, manifest.get("facts", {}))


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
            "user_vectors": None
            if user_vectors is None
            else file_fingerprint(user_vectors)["blake2b"],
            "rationales": {r.source: r.key for r in rationales},
            "recommender": config.recommender.model_dump(
                mode="json", exclude={"user_vectors", "threads", "workers", "device"}
            ),
            "evaluation": config.evaluation.model_dump(mode="json"),
        }
    )
    return RunFolder(config.run.output_dir).stage("recommenders", key)


_inputs_lock = threading.Lock()
_inputs: dict[str, StageInputs] = {}


def shared_inputs(
    rec: RecommenderConfig,
    ev: EvalConfig,
    data_folder: Path,
    out_folder: Path,
    item_vectors: Path | None,
    sources: dict[str, Path],
) -> StageInputs:
    """`load_inputs`, read once per process for consecutive runs of the same stage folder.

    Every run of a stage reads the same sequences, negatives and vectors; reading them again
    cost ~2 s a run (five rationale sources on the demo). Runs only read the inputs.
    """
    key = canonical_hash(
        [
            rec.model_dump(mode="json"),
            ev.model_dump(mode="json"),
            str(data_folder),
            str(out_folder),
            str(item_vectors),
            sorted((name, str(path)) for name, path in sources.items()),
        ]
    )
    with _inputs_lock:
        if key not in _inputs:
            _inputs.clear()  # one stage's inputs at a time: they can be large
            _inputs[key] = load_inputs(rec, ev, data_folder, out_folder, item_vectors, sources)
        return _inputs[key]


def train_run(
    config: SlimConfig,
    data: DataStageResult,
    encoded: EncodeResult | None,
    spec: RunSpec,
    rationales: Sequence[RationaleVectors] = (),
) -> list[dict[str, Any]]:
    """Train one model run and evaluate it on valid and test, both protocols."""
    rec, ev = config.recommender, config.evaluation
    if rec.threads:
        import torch

        torch.set_num_threads(rec.threads)
    folder = recommender_stage_folder(config, data, encoded, rationales)
    folder.path.mkdir(parents=True, exist_ok=True)
    inputs = shared_inputs(
        rec,
        ev,
        data.folder,
        folder.path,
        None if encoded is None else encoded.item_vectors,
        user_sources(config, rationales),
    )
    return run_one(spec, rec, ev, inputs, folder.file("checkpoints"))


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
            "evaluation": config.evaluation.model_dump(mode="json"),
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
    "encode_stage",
    "run_specs",
    "train_run",
    "finish_recommender_stage",
    "load_recommender_result",
    "needs_item_text",
    "needs_user_text",
    "user_sources",
]
