"""What every benchmark shares: a measured child process, its peak memory, the machine it ran
on (these machines differ in cores and SIMD width), and the JSON and table it leaves.

A child reports with `report_to_parent(result)`; the parent gets it from `run_child(command)`,
with the child's logs streamed to the terminal (or captured) and a clear exit on failure.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_FILE = "SLIM_BENCH_RESULT"  # where a child writes its result (set by `run_child`)


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB (2^20 bytes), from /proc; zeros once it is gone."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, *rest = line.split()
            if name in values:
                values[name] = int(rest[0]) / 1024
    except (OSError, IndexError, ValueError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (2^20 bytes).

    Linux's VmHWM, not `ru_maxrss`: a child's `ru_maxrss` starts from the parent's peak at
    fork/exec, so it would report the parent's memory (a generated log) as the child's.
    """
    peak = memory_mb()[1]
    return peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def report_to_parent(result: dict) -> None:
    """In a child started by `run_child`: hand `result` (JSON-able) to the parent."""
    Path(os.environ[RESULT_FILE]).write_text(json.dumps(result, default=str), encoding="utf-8")


def run_child(
    command: list[str], env: dict[str, str] | None = None, capture: bool = False, **run: object
) -> dict:
    """Run `command` (a child that calls `report_to_parent`) from the repository root; its
    result, with `process_seconds` (start-up included). Its output streams to ours unless
    `capture`; on failure, exit with its last output."""
    with tempfile.TemporaryDirectory() as folder:
        result_file = Path(folder) / "result.json"
        child_env = {**(os.environ if env is None else env), RESULT_FILE: str(result_file)}
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=ROOT, env=child_env, capture_output=capture, text=True, **run
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not result_file.is_file():
            output = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:]
            sys.exit(f"{' '.join(command[:4])} ... failed (exit {done.returncode})\n{output}")
        return {**json.loads(result_file.read_text(encoding="utf-8")), "process_seconds": seconds}


def slim(*args: str) -> None:
    """The `slim` command beside this interpreter, as a user runs it (exits on failure)."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run([str(Path(sys.executable).parent / "slim"), *args], env=env, check=True)


def markdown_table(header: list[str], rows: list[list[object]], numeric_from: int = 1) -> str:
    """A markdown table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if n < numeric_from else "---:" for n in range(len(header))]
    lines = [header, align, *[[str(cell) for cell in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def cpu_model() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def machine_info(*packages: str) -> dict:
    """Cores, CPU, memory, platform and the installed version of each named distribution."""
    info = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for package in packages:
        try:
            info[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            info[package.replace("-", "_")] = "unknown"
    return info


def write_results(path: Path, payload: dict) -> None:
    """`payload` as JSON at `path`, stamped with the time and the machine (torch's version too)."""
    stamped = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info("torch", "transformers"),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def merge_rows(path: Path, rows: list[dict], key) -> list[dict]:
    """Write `{"updated", "rows"}` at `path`: the earlier rows, less those that `rows` measure
    again (same `key(row)`), then `rows`; so measurements from several sessions add up."""
    kept = []
    if path.is_file():
        new = {key(r) for r in rows}
        kept = [r for r in json.loads(path.read_text())["rows"] if key(r) not in new]
    merged = kept + rows
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"updated": stamp, "rows": merged}, indent=2) + "\n")
    return merged
