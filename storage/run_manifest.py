"""One manifest per flow run: what ran, on what, with which software, so any result is traceable.

`<output_dir>/flow-runs/<started>-<flow run id>.json` holds the flow's name, run id and end
state, the configuration as the run resolved it and its hash, the data fingerprint (the data
stage's key: input file contents plus data settings), the seeds, the stage folders the run
ended with, package versions and the git commit of the code (with a flag when the working tree
had uncommitted changes).
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.atomic import write_json_atomic
from storage.fingerprint import canonical_hash
from storage.layout import RunFolder
from storage.manifest import package_versions

FOLDER = "flow-runs"


def git_commit(where: Path) -> dict[str, Any] | None:
    """HEAD of the repository holding `where` and whether its tree was dirty; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def write_run_manifest(
    run_folder: RunFolder,
    *,
    flow: str,
    flow_run_id: str | None,
    started: datetime,
    config: dict[str, Any],
    seeds: dict[str, Any],
    data_key: str | None,
    state: str,
    code: dict[str, Any] | None,
    parameters: dict[str, Any] | None = None,
) -> Path:
    """Write this flow run's manifest; returns its path. `code`: the commit the run started
    with (`code_version()` when it started; the tree may be checked out elsewhere by its end)."""
    finished = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    path = run_folder.root / FOLDER / f"{stamp}-{flow_run_id or 'local'}.json"
    write_json_atomic(
        path,
        {
            "flow": flow,
            "flow_run_id": flow_run_id,
            "state": state,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "seconds": round((finished - started).total_seconds(), 3),
            "parameters": parameters or {},
            "config_hash": canonical_hash(config),
            "config": config,
            "data_fingerprint": data_key,
            "seeds": seeds,
            "stages": run_folder.read_manifest().get("stages", {}),
            "versions": package_versions(),
            "code": code,
        },
    )
    return path


def code_version() -> dict[str, Any] | None:
    """The commit of the code checked out where this package lives."""
    return git_commit(Path(__file__).resolve().parent)
