"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every artifact is written to a temporary file in the same folder, flushed to disk, then renamed
over the target (`os.replace` is atomic on POSIX within one file system). The file gets the mode
any new file gets under the process's umask (usually 0644), whatever wrote it: `mkstemp` makes
0600 files, so artifacts written through here and Parquet written directly differed.

A process killed while writing (SIGKILL, power loss) leaves its temporary file behind. Its name
carries the host and process id (`.<target>.<host>-<pid>.<random>.tmp`), so `remove_stale_temp_files`
can tell a dead writer's leftovers from a file another process is writing right now.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once: os.umask can only be read by setting it
_HOST = socket.gethostname().replace(".", "_").replace("-", "_") or "host"


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    The caller writes the whole file to the yielded path (with any writer: DuckDB COPY,
    pyarrow, open()). On an exception the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale_temp_files(
    root: str | os.PathLike[str], dry_run: bool = False, other_hosts_after_s: float = 86400
) -> list[Path]:
    """Delete the temporary files of writers that died under `root` (with `dry_run`, only find
    them); return them.

    A file of this host is stale when its process no longer runs. One written on another host
    (a shared file system) is stale when untouched for `other_hosts_after_s` seconds."""
    removed = []
    for tmp in Path(root).rglob(".*.tmp"):
        host, _, pid = tmp.name.rsplit(".", 3)[-3].rpartition("-")
        if not pid.isdigit():
            continue  # not one of ours
        try:
            if host == _HOST:
                stale = not _running(int(pid))
            else:
                stale = time.time() - tmp.stat().st_mtime > other_hosts_after_s
        except OSError:  # renamed into place or removed while we looked
            continue
        if stale:
            if not dry_run:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
