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


def test_a_sealed_file_counts_by_its_bytes_not_its_modification_time(tmp_path):
    import os

    folder = RunFolder(tmp_path).stage("data", "k1")
    write_json_atomic(folder.file("x.json"), {"a": 1})
    folder.write_manifest({"x.json": {}})
    sealed = folder.file("x.json").stat()
    os.utime(folder.file("x.json"), ns=(sealed.st_atime_ns, sealed.st_mtime_ns + 10**9))
    assert folder.is_complete()  # touched, the same bytes: read again, still the stage's file
    text = folder.file("x.json").read_text()
    folder.file("x.json").write_text(text.replace("1", "2"))  # the same size, other bytes
    assert folder.file("x.json").stat().st_size == sealed.st_size
    assert not folder.is_complete()
    # Put back with its sealed modification time: unchanged stat facts are trusted unread.
    folder.file("x.json").write_text(text)
    os.utime(folder.file("x.json"), ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    assert folder.is_complete()


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


def _record_many(root: str, prefix: str, count: int) -> None:
    from storage import RunFolder

    run = RunFolder(root)
    for n in range(count):
        run.record_stage(run.stage(f"{prefix}{n}", "k"))


def test_two_processes_recording_stages_lose_no_pointer(tmp_path):
    """An unlocked read-modify-write of manifest.json lost a pointer in 17 of 20 trials."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_record_many, args=(str(tmp_path), prefix, 40)) for prefix in "ab"
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    stages = RunFolder(tmp_path).read_manifest()["stages"]
    assert set(stages) == {f"{p}{n}" for p in "ab" for n in range(40)}


def test_atomic_files_get_the_mode_any_new_file_gets(tmp_path):
    """mkstemp makes 0600 files: artifacts written atomically were 0600, Parquet 0644."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_json_atomic(tmp_path / "a.json", {"a": 1})
    with atomic_path(tmp_path / "b.parquet") as tmp:
        pq.write_table(pa.table({"a": [1]}), tmp)
    modes = {path.stat().st_mode & 0o777 for path in (plain, written, tmp_path / "b.parquet")}
    assert modes == {plain.stat().st_mode & 0o777}


def test_temp_files_of_killed_writers_are_found_and_live_ones_kept(tmp_path):
    import signal
    import subprocess
    import sys

    from storage import remove_stale_temp_files

    writer = (
        "import os, signal, sys\n"
        "from storage import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1_000_000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    target = tmp_path / "data" / "key" / "sequences.parquet"
    killed = subprocess.run([sys.executable, "-c", writer, str(target)], cwd=os.getcwd())
    assert killed.returncode == -signal.SIGKILL
    [leftover] = target.parent.glob(".*.tmp")
    with atomic_path(tmp_path / "live.parquet") as live:  # this process is still writing it
        assert remove_stale_temp_files(tmp_path, dry_run=True) == [leftover]
        assert leftover.exists()
        assert remove_stale_temp_files(tmp_path) == [leftover]
        assert not leftover.exists() and live.exists()
        live.write_bytes(b"done")
    assert (tmp_path / "live.parquet").read_bytes() == b"done"
