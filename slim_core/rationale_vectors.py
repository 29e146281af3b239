"""Rationales -> vectors per (user_idx, cutoff): the full rationale and each step on its own.

The recommenders' user side (`s_u_text`) and text matching read these files. One file per part:
`full` (the three steps as one text) and `step1` / `step2` / `step3` alone (the paper's Table 2).
An answer that did not parse into steps keeps its raw text as `full` and gets NULL step vectors;
a NULL vector reads as "no rationale" (the zero vector) downstream.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from slim_core.encoding import TextEncoder
from slim_core.errors import DataError
from slim_core.stages import Stage, StageHooks, run_stage
from slim_core.vectors import write_vectors
from storage import RunFolder, StageFolder, canonical_hash

PARTS = ("full", "step1", "step2", "step3")
STAGE_VERSION = 1
_COLUMNS = ("user_idx", "cutoff", "rationale", "step1", "step2", "step3")


@dataclass(frozen=True)
class RationaleVectors:
    """Where one source's vectors are: `{part}.parquet` in `folder`."""

    source: str  # student | teacher
    folder: Path
    key: str
    facts: dict[str, Any]

    def path(self, part: str) -> Path:
        return self.folder / f"{part}.parquet"


def read_rationales(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        raise DataError("rationale file not found: run the teacher / student stage", path=path)
    names = pq.read_schema(path).names
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise DataError(f"columns missing: {', '.join(missing)}", path=path)
    return pq.read_table(path, columns=list(_COLUMNS)).to_pylist()


def part_texts(row: dict[str, Any]) -> dict[str, str | None]:
    steps = [row["step1"] or "", row["step2"] or "", row["step3"] or ""]
    full = (
        "\n".join(f"Step {n}: {text}" for n, text in enumerate(steps, start=1))
        if all(steps)
        else (row["rationale"] or "").strip()
    )
    return {"full": full or None} | {f"step{n}": text or None for n, text in enumerate(steps, 1)}


def rationale_vectors_key(
    rows: list[dict[str, Any]], texts: list[dict[str, str | None]], encoder: TextEncoder
) -> str:
    content = [(r["user_idx"], r["cutoff"], t) for r, t in zip(rows, texts, strict=True)]
    return canonical_hash({"version": STAGE_VERSION, "rows": content, "model": encoder.model_id})


@dataclass(frozen=True)
class RationaleEncoding(Stage[RationaleVectors]):
    """One source's rationales -> vectors, every part once per (rationale text, encoder).
    Inputs: the rationale file's rows and the encoder, made by `encoder` when needed (the
    stage object outlives its run: it must not hold the loaded model, nor the texts)."""

    source: str
    rationales: Path
    encoder: Callable[[], TextEncoder]
    task_name = "encode-rationales"
    tag = "slim-encode"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"rationale-vectors-{self.source}"

    @property
    def run_name(self) -> str:
        return f"encode {self.source} rationales"

    def _rows(self) -> tuple[list[dict[str, Any]], list[dict[str, str | None]]]:
        rows = read_rationales(self.rationales)
        return rows, [part_texts(r) for r in rows]

    @functools.cached_property
    def key(self) -> str:
        return rationale_vectors_key(*self._rows(), self.encoder())  # model_id loads nothing

    def run(self, folder: StageFolder, hooks: StageHooks) -> None:
        rows, texts = self._rows()
        encoder = self.encoder()
        started = time.perf_counter()
        keys = {
            "user_idx": np.array([r["user_idx"] for r in rows], dtype=np.int64),
            "cutoff": np.array([r["cutoff"] for r in rows], dtype=np.int64),
        }
        counts = {}
        for part in PARTS:
            present = [n for n, t in enumerate(texts) if t[part]]
            encoded = encoder.encode(
                [texts[n][part] for n in present], description=f"{self.source} rationales, {part}"
            )
            vectors: list[np.ndarray | None] = [None] * len(rows)
            for row, n in enumerate(present):
                vectors[n] = encoded[row]
            write_vectors(folder.file(f"{part}.parquet"), keys, vectors, dim=encoder.dim)
            counts[part] = len(present)
        facts = {
            "rationales": len(rows),
            "users": len({r["user_idx"] for r in rows}),
            "encoded": counts,
            "seconds": round(time.perf_counter() - started, 3),
            "source_file": str(self.rationales),
        }
        folder.write_manifest({f"{part}.parquet": {} for part in PARTS}, facts=facts)

    def load(self, folder: StageFolder) -> RationaleVectors:
        facts = (folder.read_manifest() or {})["facts"]
        return RationaleVectors(self.source, folder.path, folder.key, facts)


def encode_rationales(
    source: str, rationales: Path, run_folder: RunFolder, encoder: TextEncoder
) -> RationaleVectors:
    """Encode every part once per (rationale text, encoder): a rerun reuses the folder."""
    return run_stage(RationaleEncoding(source, rationales, lambda: encoder), run_folder)
