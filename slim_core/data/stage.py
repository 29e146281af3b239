"""The data stage: raw files -> `interactions`, `items`, `sequences` Parquet + `stats.json`.

The stage folder is keyed by the input files' content and the data configuration, so a rerun
with the same inputs reuses the folder and any change writes a new one.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from slim_core.config import DataConfig, SlimConfig
from slim_core.data.ingest import ingest, input_files
from slim_core.data.sequences import build_sequences
from slim_core.errors import DataError
from slim_core.stages import Artifact, Stage, StageHooks, run_stage
from storage import (
    RunFolder,
    StageFolder,
    atomic_path,
    canonical_hash,
    file_fingerprint,
    write_json_atomic,
)

log = logging.getLogger("slim_core.data")

# Bump when the stage's output for the same inputs changes (schema, rules): old folders go stale.
DATA_STAGE_VERSION = 1
ARTIFACTS = ("interactions", "items", "sequences")
# Settings that change speed, not output: left out of the cache key.
# Settings that do not change the stage's output (domain: only the prompts read it).
NON_OUTPUT_SETTINGS = {"duckdb_threads", "duckdb_memory_limit", "duckdb_temp_directory", "domain"}


@dataclass(frozen=True)
class DataStageResult:
    folder: Path
    key: str
    stats: dict[str, Any]

    def path(self, artifact: str) -> Path:
        return self.folder / f"{artifact}.parquet"


def fingerprint_inputs(cfg: DataConfig) -> list[dict[str, Any]]:
    """Content fingerprints of every input file."""
    prints = []
    for path in input_files(cfg.source):
        if not path.exists():
            raise DataError("file not found", path=path, field="data.source")
        if not path.is_file():
            raise DataError("expected a file, found a folder", path=path, field="data.source")
        prints.append(file_fingerprint(path))
    return prints


def data_stage_key(cfg: DataConfig, inputs: list[dict[str, Any]] | None = None) -> str:
    """Hash of what the stage's output depends on: file contents (not paths) and settings.
    `inputs`: `fingerprint_inputs(cfg)` when the caller has it already."""
    settings = cfg.model_dump(mode="json", exclude=NON_OUTPUT_SETTINGS)
    if cfg.sample_users is None:  # keys of runs without a sample stay what they were
        settings.pop("sample_users")
        settings.pop("sample_seed")
    for name in list(settings["source"]):
        value = getattr(cfg.source, name)
        if isinstance(value, Path) or (
            isinstance(value, list) and value and isinstance(value[0], Path)
        ):
            settings["source"].pop(name)  # the file's content is in the fingerprints instead
    digests = [fp["blake2b"] for fp in inputs or fingerprint_inputs(cfg)]
    return canonical_hash({"version": DATA_STAGE_VERSION, "settings": settings, "inputs": digests})


def _connect(cfg: DataConfig) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    if cfg.duckdb_threads:
        con.execute("SET threads = ?", [int(cfg.duckdb_threads)])
    if cfg.duckdb_memory_limit:
        con.execute("SET memory_limit = ?", [cfg.duckdb_memory_limit])
    if cfg.duckdb_temp_directory:
        con.execute("SET temp_directory = ?", [str(cfg.duckdb_temp_directory)])
    return con


def _copy_parquet(con: duckdb.DuckDBPyConnection, table: str, target: Path) -> int:
    with atomic_path(target) as tmp:
        con.execute(f"COPY {table} TO ? (FORMAT parquet, COMPRESSION zstd)", [str(tmp)])
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def run_data_stage(
    cfg: DataConfig, folder: StageFolder, inputs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Compute the stage into `folder` (no cache check) and seal it with its manifest.
    `inputs`: `fingerprint_inputs(cfg)` when the caller has it already."""
    con = _connect(cfg)
    try:
        log.info(
            "[1/4] reading %s input (%s)",
            cfg.source.format,
            ", ".join(map(str, input_files(cfg.source))),
        )
        result = ingest(con, cfg.source)
        log.info("read %d interactions and %d item rows", result.raw_interactions, result.raw_items)
        log.info("[2/4] filtering, ordering and splitting in DuckDB")
        stats = build_sequences(
            con, cfg, has_timestamps=result.has_timestamps, source_name=str(result.input_files[0])
        )
        log.info("[3/4] writing Parquet artifacts to %s", folder.path)
        files = {
            f"{name}.parquet": {"rows": _copy_parquet(con, name, folder.file(f"{name}.parquet"))}
            for name in ARTIFACTS
        }
    finally:
        con.close()
    write_json_atomic(folder.file("stats.json"), stats)
    files["stats.json"] = {}
    log.info("[4/4] sealing the stage folder")
    folder.write_manifest(
        files,
        stage_version=DATA_STAGE_VERSION,
        config=cfg.model_dump(mode="json"),
        config_hash=canonical_hash(cfg.model_dump(mode="json", exclude=NON_OUTPUT_SETTINGS)),
        inputs=inputs or fingerprint_inputs(cfg),
    )
    return stats


@dataclass(frozen=True)
class DataStage(Stage[DataStageResult]):
    """Inputs: the data settings and the files they name."""

    cfg: DataConfig
    name = "data"
    task_name = "prepare-data"
    tag = "slim-data"

    @functools.cached_property
    def inputs(self) -> list[dict[str, Any]]:
        """The input files' fingerprints, read once for the key and the manifest."""
        return fingerprint_inputs(self.cfg)

    @functools.cached_property
    def key(self) -> str:
        return data_stage_key(self.cfg, self.inputs)

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        run_data_stage(self.cfg, folder, self.inputs)

    def load(self, folder: StageFolder) -> DataStageResult:
        return DataStageResult(folder.path, folder.key, _read_json(folder.file("stats.json")))

    def artifacts(self, folder: StageFolder) -> list[Artifact]:
        stats = _read_json(folder.file("stats.json"))
        rows = "\n".join(f"| {label} | {value} |" for label, value in summary_rows(stats))
        return [
            Artifact(
                "data-summary",
                "Users, items, interactions and sequence lengths after filtering",
                markdown=f"# Data stage\n\nFolder: `{folder.path}`\n\n| | |\n|---|---|\n{rows}\n",
            )
        ]


def prepare_data(config: SlimConfig) -> DataStageResult:
    """Run the data stage, or reuse its folder when inputs and settings are unchanged."""
    return run_stage(DataStage(config.data), RunFolder(config.run.output_dir))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def summary_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for a summary table of the data stage."""
    out, seq, dropped = stats["output"], stats["sequence_length"], stats["dropped"]
    sample = stats.get("sample")
    sampled = (
        []
        if sample is None
        else [
            (
                "sample: users / seed / interactions left out",
                f"{sample['users']:,} / {sample['seed']} / {dropped['not_sampled']:,}",
            )
        ]
    )
    return sampled + [
        ("users", f"{out['users']:,}"),
        ("items", f"{out['items']:,}"),
        ("interactions", f"{out['interactions']:,}"),
        ("density", f"{out['density']:.5f}"),
        ("items without text", f"{out['items_without_text']:,}"),
        (
            "sequence length min / median / mean / p90 / max",
            f"{seq['min']} / {seq['median']:g} / {seq['mean']:.1f} / {seq['p90']:g} / {seq['max']}",
        ),
        (
            "read: interactions / users / items",
            f"{stats['input']['interactions']:,} / {stats['input']['users']:,} / {stats['input']['items']:,}",
        ),
        (
            "dropped: duplicates / below min rating",
            f"{dropped['duplicates']:,} / {dropped['below_min_rating']:,}",
        ),
        (
            "dropped by k-core: users / items / interactions",
            f"{dropped['k_core_users']:,} / {dropped['k_core_items']:,} / {dropped['k_core_interactions']:,}",
        ),
    ]


__all__ = [
    "DataStage",
    "DataStageResult",
    "prepare_data",
    "data_stage_key",
    "run_data_stage",
    "summary_rows",
]
