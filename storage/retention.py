"""Prune old stage folders: every folder that is not its stage's current one and is older than a
cutoff. The current folders (what the run folder's manifest points at) are always kept."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from storage.layout import MANIFEST, RunFolder


def stale_stage_folders(run_folder: RunFolder, before: datetime) -> list[Path]:
    """Stage folders not current for their stage, last written before `before`."""
    current = run_folder.read_manifest().get("stages", {})
    stale = []
    for stage_dir in sorted(p for p in run_folder.root.iterdir() if p.is_dir()):
        if stage_dir.name not in current:
            continue  # not a stage folder (teacher/, student/, report/, flow-runs/ ...)
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            if folder.name == current[stage_dir.name]:
                continue
            stamp = folder / MANIFEST if (folder / MANIFEST).exists() else folder
            if datetime.fromtimestamp(stamp.stat().st_mtime, tz=before.tzinfo) < before:
                stale.append(folder)
    return stale


def prune_stage_folders(
    run_folder: RunFolder, before: datetime, dry_run: bool = False
) -> list[Path]:
    folders = stale_stage_folders(run_folder, before)
    if not dry_run:
        for folder in folders:
            shutil.rmtree(folder)
    return folders
