import os
import shutil

import pytest

from storage import (
    RunFolder,
    atomic_path,
    canonical_hash,
    file_fingerprint,
    open_catalog,
    write_json_atomic,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "a.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("first")
    assert target.read_text() == "first"
    with atomic_path(target) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["a.txt"]  # no temporary file left


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("crash in the middle of writing")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_fingerprint_follows_content_not_path_or_time(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("user,item\n1,2\n")
    b = tmp_path / "copy.csv"
    shutil.copy(a, b)
    os.utime(b, (1, 1))
    assert file_fingerprint(a)["blake2b"] == file_fingerprint(b)["blake2b"]
    b.write_text("user,item\n1,3\n")
    assert file_fingerprint(a)["blake2b"] != file_fingerprint(b)["blake2b"]


def test_canonical_hash_ignores_key_order():
    assert canonical_hash({"a": 1, "b": [1, 2]}) == canonical_hash({"b": [1, 2], "a": 1})
    assert canonical_hash({"a": 1}) != canonical_hash({"a": 2})


def test_stage_folder_is_complete_only_when_sealed(tmp_path):
    run = RunFolder(tmp_path)
    folder = run.stage("data", "k1")
    assert not folder.is_complete()
    write_json_atomic(folder.file("x.json"), {"a": 1})
    assert not folder.is_complete()  # files without a manifest: an interrupted stage
    manifest = folder.write_manifest({"x.json": {}}, note="test")
    assert folder.is_complete()
    assert manifest["versions"]["python"] and manifest["note"] == "test"
    folder.file("x.json").unlink()
    assert not folder.is_complete()  # a listed file went missing


def test_run_points_at_current_stage_and_catalog_reads_it(tmp_path):
    import duckdb

    run = RunFolder(tmp_path)
    assert run.current("data") is None
    folder = run.stage("data", "k1")
    folder.path.mkdir(parents=True)
    duckdb.sql("SELECT 1 AS user_idx UNION ALL SELECT 2").write_parquet(
        str(folder.file("sequences.parquet"))
    )
    folder.write_manifest({"sequences.parquet": {"rows": 2}})
    run.record_stage(folder)
    assert run.current("data") == folder
    con = open_catalog(tmp_path)
    assert con.execute("SELECT sum(user_idx) FROM sequences").fetchone()[0] == 3
