"""What a manifest records besides the stage's own facts: versions of the software that made it."""

from __future__ import annotations

import platform
from importlib import metadata

TRACKED_PACKAGES = (
    "slim-rec",
    "duckdb",
    "pyarrow",
    "pydantic",
    "prefect",
    "torch",
    "transformers",
    "trl",
    "peft",
    "sentence-transformers",
    "vllm",
)


def package_versions(packages: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that can change a stage's output (absent ones skipped)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
