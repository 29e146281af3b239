"""Content fingerprints for input files and configurations (cache keys, manifests)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b of a file's bytes.

    The digest, not the modification time, decides whether an input changed: copying or
    touching a file does not invalidate caches, editing one byte does.
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size and BLAKE2b digest of a file's bytes (`file_digest`)."""
    path = Path(path)
    return {"path": str(path.resolve()), "size": path.stat().st_size, "blake2b": file_digest(path)}


def canonical_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serialisable object (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()[:length]
