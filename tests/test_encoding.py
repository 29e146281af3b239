"""Text encoding with the bundled all-MiniLM-L6-v2 (loaded once for the module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slim_core.encoding import (
    DEFAULT_ENCODER,
    TextEncoder,
    encode_items,
    item_text_key,
    resolve_model_path,
)
from slim_core.errors import ConfigError, DataError
from slim_core.vectors import read_item_vectors


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def write_items(path: Path, texts: list[str | None], titles: list[str] | None = None) -> Path:
    n = len(texts)
    table = pa.table(
        {
            "item_idx": pa.array(range(1, n + 1), pa.int32()),
            "item_id": [f"i{i}" for i in range(1, n + 1)],
            "title": titles or [None] * n,
            "text": pa.array(texts, pa.string()),
            "n_interactions": pa.array([5] * n, pa.int32()),
        }
    )
    pq.write_table(table, path)
    return path


def test_resolve_model_path(tmp_path: Path):
    bundled = resolve_model_path(DEFAULT_ENCODER)
    assert (Path(bundled) / "modules.json").is_file()
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match="'intfloat/e5-small' is neither.*pinned hub id"):
        resolve_model_path("intfloat/e5-small")


def test_import_does_not_load_models():
    code = "import sys, slim_core.encoding; assert 'sentence_transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encode(encoder: TextEncoder):
    vectors = encoder.encode(
        [
            "A thriller novel about a detective.",
            "A crime story with a police detective.",
            "Cat food, 2 kg bag.",
        ]
    )
    assert encoder.dim == 384
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert encoder.encode([]).shape == (0, 384)


def test_model_id(encoder: TextEncoder, tmp_path: Path):
    assert TextEncoder().model_id == encoder.model_id
    assert TextEncoder(normalize=False).model_id != encoder.model_id
    (tmp_path / "config.json").write_text("{}")
    first = TextEncoder(str(tmp_path)).model_id
    assert TextEncoder(str(tmp_path)).model_id == first
    (tmp_path / "config.json").write_text('{"x": 1}')
    assert TextEncoder(str(tmp_path)).model_id != first


def test_encode_items(encoder: TextEncoder, tmp_path: Path):
    texts = ["Title: Dune; Category: Books", None, "Title: Cat food; Category: Pets"]
    items = write_items(tmp_path / "items.parquet", texts)
    out = tmp_path / "vec" / "item_text.parquet"
    facts = encode_items(items, out, encoder)
    assert facts["rows"] == 3 and facts["encoded"] == 2 and facts["without_text"] == 1
    assert facts["dim"] == 384 and facts["model_id"] == encoder.model_id
    assert facts["text_key"] == item_text_key(items)
    assert pq.read_table(out).column("vector").null_count == 1

    matrix, mask = read_item_vectors(out, 3, 384, require_all=False)
    assert mask.tolist() == [False, True, False, True]
    np.testing.assert_allclose(matrix[3], encoder.encode([texts[2]])[0], atol=1e-5)
    assert not matrix[2].any()
    with pytest.raises(DataError, match="item_idx 2; text variants need text") as info:
        read_item_vectors(out, 3, 384)
    assert str(out) in str(info.value)


def test_item_text_key(tmp_path: Path):
    key = item_text_key(write_items(tmp_path / "a.parquet", ["x", None]))
    titles = write_items(tmp_path / "b.parquet", ["x", None], titles=["other", "titles"])
    assert item_text_key(titles) == key
    assert item_text_key(write_items(tmp_path / "c.parquet", ["x", "y"])) != key


def test_items_without_text_column(tmp_path: Path, encoder: TextEncoder):
    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_idx": pa.array([1], pa.int32())}), path)
    with pytest.raises(DataError, match="field 'text': column missing") as info:
        encode_items(path, tmp_path / "out.parquet", encoder)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="items file not found"):
        item_text_key(tmp_path / "none.parquet")


def test_long_encoding_reports_progress_where_no_bar_is_shown(encoder, monkeypatch, caplog):
    """Not a terminal (pytest captures the output): a log line per chunk, and the vectors are
    those of one call, in order."""
    import logging

    import slim_core.encoding as encoding

    monkeypatch.setattr(encoding, "PROGRESS_CHUNK", 4)
    texts = [f"item number {n}" for n in range(10)]
    with caplog.at_level(logging.INFO, logger="slim_core.encoding"):
        chunked = encoder.encode(texts, description="item text")
    lines = [r.getMessage() for r in caplog.records if r.name == "slim_core.encoding"]
    assert [line.split(" texts")[0] for line in lines] == [
        "item text: 4 of 10",
        "item text: 8 of 10",
        "item text: 10 of 10",
    ]
    monkeypatch.setattr(encoding, "PROGRESS_CHUNK", 1024)
    np.testing.assert_allclose(chunked, encoder.encode(texts), atol=1e-5)
