"""Where SLIM's artifacts live: run folders, atomic writes, manifests, the DuckDB catalogue.

The bottom layer: it imports nothing from the rest of the project.
"""

from storage.atomic import (
    atomic_path,
    remove_stale_temp_files,
    write_json_atomic,
    write_text_atomic,
)
from storage.catalog import open_catalog
from storage.fingerprint import canonical_hash, file_digest, file_fingerprint
from storage.layout import RunFolder, StageFolder
from storage.manifest import package_versions
from storage.run_manifest import code_version, git_commit, write_run_manifest

__all__ = [
    "RunFolder",
    "StageFolder",
    "atomic_path",
    "remove_stale_temp_files",
    "open_catalog",
    "canonical_hash",
    "file_digest",
    "file_fingerprint",
    "package_versions",
    "code_version",
    "git_commit",
    "write_run_manifest",
    "write_json_atomic",
    "write_text_atomic",
]
