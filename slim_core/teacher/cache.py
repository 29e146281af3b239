"""A durable answer cache and dead-letter table for paid LLM calls.

    cache = AnswerCache(folder)
    todo = [p for p in prompts if answer_key(...) not in cache.answered_keys()]
    ... call the model for one batch ...
    cache.write_answers(rows)      # one Parquet file per batch, written atomically
    cache.write_failures(rows)     # prompts that still failed after their retries

Every batch is its own file, renamed into place only when complete, so a crash or kill loses at
most the batch being collected (and the requests in flight) and a rerun pays only for prompts
without an answer. Every row carries what its prompt cost (`cost_usd`), so the files are also
the spend ledger: `spent_usd()` sums them across runs, less what `reset_budget()` set aside.
The key is a hash
of (model, template version, prompt text, decoding parameters): change any of them and the
prompt is asked again; change nothing and it never is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage import atomic_path, canonical_hash, write_json_atomic

BUDGET_RESET = "budget-reset.json"

ANSWER_COLUMNS = {
    "key": pa.string(),
    "user_idx": pa.int32(),
    "cutoff": pa.int32(),
    "model": pa.string(),
    "template_version": pa.string(),
    "answer": pa.string(),
    "tokens_in": pa.int64(),
    "tokens_out": pa.int64(),
    "latency_s": pa.float64(),
    "attempts": pa.int32(),
    "created_at": pa.string(),
    "cost_usd": pa.float64(),  # every attempt of this prompt, billed or estimated
    "cost_estimated": pa.bool_(),  # some of it estimated (no `usage` in a reply)
}
FAILURE_COLUMNS = {
    "key": pa.string(),
    "user_idx": pa.int32(),
    "cutoff": pa.int32(),
    "model": pa.string(),
    "template_version": pa.string(),
    "error": pa.string(),
    "raw_answer": pa.string(),
    "attempts": pa.int32(),
    "failed_at": pa.string(),
    "cost_usd": pa.float64(),  # what the failed attempts may have been billed
    "cost_estimated": pa.bool_(),
}


def answer_key(model: str, template_version: str, prompt: str, decoding: dict[str, Any]) -> str:
    """SHA-256 of what determines an answer; decoding parameters in canonical JSON."""
    payload = json.dumps(
        {"model": model, "template": template_version, "prompt": prompt, "decoding": decoding},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompt_key(model: str, prompt: Any, decoding: dict[str, Any]) -> str:
    """`answer_key` of a prompt; the n-th extra sample of the same text has a key of its own
    (the first sample's key is the one a prompt always had)."""
    if getattr(prompt, "sample", 0):
        decoding = {**decoding, "sample": prompt.sample}
    return answer_key(model, prompt.version, prompt.text, decoding)


class AnswerCache:
    """Answers and failures as Parquet shards under `folder/answers` and `folder/failures`.

    Safe to share between threads (the teacher's batches run in two): every read opens its own
    in-memory DuckDB connection; DuckDB's default connection serves one call at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.answers = self.folder / "answers"
        self.failures = self.folder / "failures"

    def _glob(self, where: Path) -> str | None:
        return f"{where}/*.parquet" if where.is_dir() and any(where.glob("*.parquet")) else None

    def _keys(self, where: Path) -> set[str]:
        pattern = self._glob(where)
        if pattern is None:
            return set()
        with duckdb.connect() as con:
            rows = con.execute("SELECT DISTINCT key FROM read_parquet(?)", [pattern]).fetchall()
        return {row[0] for row in rows}

    def _spent(self, where: Path) -> float:
        pattern = self._glob(where)
        if pattern is None:
            return 0.0
        with duckdb.connect() as con:  # files from before the ledger have no cost column
            columns = {
                row[0]
                for row in con.execute(
                    "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [pattern]
                ).fetchall()
            }
            if "cost_usd" not in columns:
                return 0.0
            total = con.execute(
                "SELECT coalesce(sum(cost_usd), 0) FROM read_parquet(?, union_by_name = true)",
                [pattern],
            ).fetchone()[0]
        return float(total)

    def spent_usd(self) -> float:
        """What every run has spent through this cache since the last `reset_budget()`."""
        return self._spent(self.answers) + self._spent(self.failures) - self._reset_at()

    def reset_budget(self) -> float:
        """Start counting the spend from zero (the answers stay); returns what was spent."""
        spent = self.spent_usd()
        write_json_atomic(self.folder / BUDGET_RESET, {"set_aside_usd": spent + self._reset_at()})
        return spent

    def _reset_at(self) -> float:
        try:
            return float(json.loads((self.folder / BUDGET_RESET).read_text())["set_aside_usd"])
        except FileNotFoundError:
            return 0.0

    def answered_keys(self) -> set[str]:
        return self._keys(self.answers)

    def failed_keys(self) -> set[str]:
        """Keys with at least one recorded failure (answered later or not)."""
        return self._keys(self.failures)

    def done_keys(self, failed_too: bool) -> set[str]:
        """Keys a run need not ask: the answered ones, and with `failed_too` the failed ones
        (a normal run leaves dead letters to `retry-failed`)."""
        return self.answered_keys() | (self.failed_keys() if failed_too else set())

    def read_answers(self) -> list[dict[str, Any]]:
        """One row per key (the first answer written wins)."""
        return self._read(self.answers, "created_at")

    def dead_letters(self) -> list[dict[str, Any]]:
        """The latest failure of each key that has no answer yet: what a replay must ask again."""
        failures = self._read(self.failures, "failed_at DESC")
        answered = self.answered_keys()
        return [row for row in failures if row["key"] not in answered]

    def _read(self, where: Path, order: str) -> list[dict[str, Any]]:
        pattern = self._glob(where)
        if pattern is None:
            return []
        with duckdb.connect() as con:
            result = con.execute(
                "SELECT * FROM read_parquet(?, union_by_name = true) "
                f"QUALIFY row_number() OVER (PARTITION BY key ORDER BY {order}) = 1 ORDER BY key",
                [pattern],
            )
            columns = [column[0] for column in result.description]
            return [dict(zip(columns, values, strict=True)) for values in result.fetchall()]

    def write_answers(self, rows: list[dict[str, Any]]) -> Path | None:
        return self._write(self.answers, rows, ANSWER_COLUMNS)

    def write_failures(self, rows: list[dict[str, Any]]) -> Path | None:
        return self._write(self.failures, rows, FAILURE_COLUMNS)

    def _write(
        self, where: Path, rows: list[dict[str, Any]], schema: dict[str, pa.DataType]
    ) -> Path | None:
        if not rows:
            return None
        table = pa.table(
            {name: pa.array([row.get(name) for row in rows], kind) for name, kind in schema.items()}
        )
        # Named by content: writing the same batch twice leaves one file.
        stamp = rows[0].get("created_at") or rows[0].get("failed_at")
        path = where / f"{canonical_hash([sorted(row['key'] for row in rows), stamp])}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path
