"""What a benchmark ran on, saved with its results: these machines differ (cores, SIMD width)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_model() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def machine_info(*packages: str) -> dict:
    """Cores, CPU, memory, platform and the installed version of each named distribution."""
    info = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            info[package.replace("-", "_")] = "unknown"
    return info


def write_results(path: Path, payload: dict) -> None:
    """`payload` as JSON at `path`, stamped with the time and the machine (torch's version too)."""
    stamped = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info("torch", "transformers"),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def merge_rows(path: Path, rows: list[dict], key) -> list[dict]:
    """Write `{"updated", "rows"}` at `path`: the earlier rows, less those that `rows` measure
    again (same `key(row)`), then `rows`; so measurements from several sessions add up."""
    kept = []
    if path.is_file():
        new = {key(r) for r in rows}
        kept = [r for r in json.loads(path.read_text())["rows"] if key(r) not in new]
    merged = kept + rows
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"updated": stamp, "rows": merged}, indent=2) + "\n")
    return merged
