"""Content fingerprints for input files and configurations (cache keys, manifests)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def file_digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b of a file's bytes.

    The digest, not the modification time, decides whether an input changed: copying or
    touching a file does not invalidate caches, editing one byte does. It is computed again only
    when the file's size, modification time or inode changed: a run reads its inputs' digests at
    least three times (plan, stage key, manifest) and checks sealed stage folders as often, at
    ~400 MB/s on a 2-core machine (13 s a read for a 5 GB log), so this one memo is kept.
    """
    stat = os.stat(path)
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=1024)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
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
