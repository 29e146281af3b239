"""The run folder layout.

    <output_dir>/
      config.yaml          resolved configuration of the latest run
      manifest.json        run manifest: which stage folder is current, versions, times
      <stage>/<key>/       one folder per stage and cache key, e.g. data/3f9c.../
        *.parquet, stats.json
        manifest.json      written last: a stage folder without it is incomplete

Stage folders are content-addressed: the key is a hash of everything the stage's output depends
on (input fingerprints, configuration, code version). A rerun with the same inputs finds the
folder complete and reuses it; a change writes a new folder beside the old one, so an older
result is never half-overwritten and a cached pointer to it never lies.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock

from storage.atomic import write_json_atomic, write_text_atomic
from storage.fingerprint import file_digest
from storage.manifest import package_versions

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageFolder:
    """One stage's output folder for one cache key."""

    stage: str
    key: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_complete(self) -> bool:
        """True when the manifest exists and every file it lists is there with the size and
        digest it had when the folder was sealed: a modified artifact (an edit, a `COPY ... TO`
        over it) makes the folder incomplete, so the stage is computed again, never reused.

        A file whose size, modification time and inode are still those it was sealed with is
        not read again: every rerun checks every stage folder, and reading a 5 GB folder takes
        ~13 s at the ~400 MB/s BLAKE2b runs at on 2 cores. A copied or touched file is read and
        still counts when its bytes are unchanged."""
        manifest = self.read_manifest()
        if manifest is None:
            return False
        for name, facts in manifest.get("files", {}).items():
            path = self.path / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                return False
            if "blake2b" not in facts:
                continue
            if stat.st_size != facts["size"]:
                return False
            if _stat_facts(stat) != facts.get("stat") and file_digest(path) != facts["blake2b"]:
                return False
        return True

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def write_manifest(self, files: dict[str, Any], **facts: Any) -> dict[str, Any]:
        """Seal the stage folder: call after every file of the stage is written. Each file's
        size and digest go into the manifest beside what `files` says about it."""
        sealed = {}
        for name, about in files.items():
            stat = (self.path / name).stat()
            sealed[name] = {
                **about,
                "size": stat.st_size,
                "blake2b": file_digest(self.path / name),
                "stat": _stat_facts(stat),
            }
        manifest = {
            "stage": self.stage,
            "key": self.key,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "files": sealed,
            **facts,
        }
        write_json_atomic(self.manifest_path, manifest)
        return manifest


def _stat_facts(stat: os.stat_result) -> list[int]:
    """What changes when a file is written or replaced: modification time (ns) and inode."""
    return [stat.st_mtime_ns, stat.st_ino]


class RunFolder:
    """A run's output folder (config `run.output_dir`)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def stage(self, stage: str, key: str) -> StageFolder:
        # Created by the first write into it (atomic writes make parent folders).
        return StageFolder(stage=stage, key=key, path=self.root / stage / key)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"stages": {}}

    def record_stage(self, folder: StageFolder) -> None:
        """Point the run at `folder` as the current output of its stage.

        A read-modify-write under a file lock: two processes recording different stages at
        once (two flows, Dask workers) lost one of the two pointers without it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / f".{MANIFEST}.lock"):
            manifest = self.read_manifest()
            manifest.setdefault("stages", {})[folder.stage] = folder.key
            manifest["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            manifest["versions"] = package_versions()
            write_json_atomic(self.manifest_path, manifest)

    def current(self, stage: str) -> StageFolder | None:
        """The stage folder the run currently points at, if it is complete."""
        key = self.read_manifest().get("stages", {}).get(stage)
        if key is None:
            return None
        folder = self.stage(stage, key)
        return folder if folder.is_complete() else None

    def save_config(
        self, yaml_text: str, flow_run_id: str | None = None, code: dict[str, Any] | None = None
    ) -> Path:
        """`config.yaml` (the latest run's), and with a flow run id that run's own copy,
        `flow-runs/<id>.config.yaml`, and the code it started with, `flow-runs/<id>.code.yaml`:
        its run manifest, written when it ends, records both."""
        if flow_run_id:
            write_text_atomic(self.flow_run_config(flow_run_id), yaml_text)
            write_text_atomic(self.flow_run_code(flow_run_id), yaml.safe_dump(code))
        return write_text_atomic(self.root / "config.yaml", yaml_text)

    def flow_run_code(self, flow_run_id: str) -> Path:
        return self.root / "flow-runs" / f"{flow_run_id}.code.yaml"

    def flow_run_config(self, flow_run_id: str) -> Path:
        return self.root / "flow-runs" / f"{flow_run_id}.config.yaml"
