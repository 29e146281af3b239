"""Errors a user can act on: each names the file, field or row and what was expected."""

from __future__ import annotations

from pathlib import Path


class SlimError(Exception):
    """Base class for errors caused by the user's input or configuration, not by a bug."""


class ConfigError(SlimError):
    """The configuration file or an environment override is invalid."""


class DataError(SlimError):
    """An input data file is missing, unreadable or does not have the expected shape."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        where = ", ".join(
            part
            for part in (self.path and f"file {self.path}", field and f"field {field!r}")
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
