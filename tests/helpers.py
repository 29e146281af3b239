"""Small builders shared by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import yaml

from slim_core.config import SlimConfig, config_from_dict
from slim_core.data import DataStageResult, prepare_data

REPO = Path(__file__).resolve().parents[1]


def make_config(output_dir: Path, source: dict[str, Any], **data: Any) -> SlimConfig:
    return config_from_dict(
        {"run": {"output_dir": str(output_dir)}, "data": {"source": source, **data}}
    )


def ml100k_source(root: Path) -> dict[str, Any]:
    """The data source of the shared MovieLens-100K copy under `root` (../shared/data)."""
    return {
        "format": "recbole_atomic",
        "interactions": str(root / "ml-100k/ml-100k.inter"),
        "items": str(root / "ml-100k/ml-100k.item"),
        "item_columns": {"title": "movie_title", "category": "class"},
    }


def run_stage(output_dir: Path, source: dict[str, Any], **data: Any) -> DataStageResult:
    """Run the data stage without Prefect and return its result."""
    return prepare_data(make_config(output_dir, source, **data))


def rows(result: DataStageResult, artifact: str, order: str | None = None) -> list[dict[str, Any]]:
    """An artifact's rows as dicts."""
    relation = duckdb.read_parquet(str(result.path(artifact)))
    if order:
        relation = relation.order(order)
    return [dict(zip(relation.columns, values, strict=True)) for values in relation.fetchall()]


def sequences_by_user(result: DataStageResult) -> dict[str, list[str]]:
    """user_id -> stored sequence as raw item ids."""
    items = {r["item_idx"]: r["item_id"] for r in rows(result, "items")}
    return {r["user_id"]: [items[i] for i in r["items"]] for r in rows(result, "sequences")}


@contextlib.contextmanager
def spawned(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    stop: int = signal.SIGKILL,
    **popen: Any,
) -> Iterator[subprocess.Popen]:
    """A real process, as a user starts it, in a process group of its own (with the temporary
    Prefect server it may start); on the way out `stop` goes to the whole group. Its output
    goes to `log` when given (read it for a failure's message), else nowhere."""
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("w")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, stop)
            process.wait(timeout=60)


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.1,
) -> bool:
    """Poll `condition` until it holds (True), `timeout` seconds pass or `process` ends
    (False): the caller's assert says what it waited for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            return bool(condition())
        time.sleep(interval)
    return True


def group_alive(pid: int) -> bool:
    """Whether any process is left in the process group `pid` leads."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def csv(header: str, *lines: str) -> str:
    return "\n".join([header, *lines]) + "\n"


def flow_run_artifact(flow_run_id: Any, key: str) -> str:
    """The markdown of the artifact `key` made by one flow run.

    The Prefect server is shared by the whole test session, so other tests' runs write artifacts
    with the same key: always filter by the flow run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    assert len(artifacts) == 1, f"expected one {key!r} artifact, found {len(artifacts)}"
    return str(artifacts[0].data)


def demo_config(
    tmp_path: Path, name: str = "c.yaml", recommender: dict | None = None, **data
) -> Path:
    """configs/demo.yaml with absolute data paths and a private output folder; without its LLM
    stages (tests/test_pipeline_e2e.py runs those with tiny models)."""
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    config.pop("teacher", None)
    config.pop("student", None)
    config["recommender"]["variants"] = ["id", "item_text"]
    config["recommender"]["text_matching"] = False
    source = config["data"]["source"]
    for key in ("item_text", "item_index", "user_index"):
        source[key] = str(REPO / source[key])
    source["sequences"] = [str(REPO / p) for p in source["sequences"]]
    config["run"]["output_dir"] = str(tmp_path / "run")
    config["data"].update(data)
    config["recommender"].update(recommender or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def task_states(flow_state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
            )
        )
    return [run.state.name for run in runs]


USERS = 16


def interaction_log(extra: dict[int, int] | None = None) -> str:
    """16 users with 6 purchases each; `extra` appends more purchases to some users."""
    lines = []
    for user in range(USERS):
        count = 6 + (extra or {}).get(user, 0)
        for step in range(count):
            lines.append(f"u{user},i{(user + step * 3) % 20},{1000 + step * 10 + user}")
    return csv("user_id,item_id,timestamp", *lines)


def items_file(folder: Path) -> Path:
    path = folder / "items.csv"
    path.write_text(
        csv("item_id,title,category", *(f"i{n},Widget number {n},Lab" for n in range(20)))
    )
    return path


def data_section(folder: Path, extra: dict[int, int] | None = None) -> dict:
    """The `data` configuration of the small fixture, its files written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.csv"
    log.write_text(interaction_log(extra))
    source = {"format": "table", "interactions": str(log), "items": str(items_file(folder))}
    return {"source": source, "k_core_users": 1, "k_core_items": 1}


E2E_VARIANTS = ["id", "item_text", "user_text", "item_user_text"]


def e2e_config(tmp_path: Path, fake_url: str, base: Path) -> Path:
    """The whole pipeline on the small fixture: a loopback teacher at `fake_url`, the tiny
    student `base`, every variant and rationale source (tests/test_pipeline_e2e.py)."""
    config = {
        "run": {"name": "e2e", "output_dir": str(tmp_path / "run"), "seed": 3},
        "data": data_section(tmp_path),
        "recommender": {
            "models": ["sasrec", "gru4rec"],
            "variants": E2E_VARIANTS,
            "rationales": ["student", "teacher", "history"],
            "zero_vector_control": True,
            "text_matching": True,
            "text_matching_parts": ["full", "step1", "step2", "step3"],
            "seeds": [1],
            "max_epochs": 2,
            "dim": 16,
            "max_len": 8,
        },
        "evaluation": {"sampled_negatives": 10},
        "teacher": {
            "backend": "openai",
            "model": "teacher-test",
            "base_url": fake_url,
            "api_key_env": None,
            "users": 8,
            "cutoffs": ["train", "valid"],
            "batch_size": 8,
        },
        "student": {
            "base_model": str(base),
            # Enough to memorise the loopback teacher's fixed answer, so that the student's
            # answers have the three steps (the step-only text matching rows need them).
            "max_steps": 120,
            "learning_rate": 0.01,
            "lora_r": 16,
            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
            "batch_size": 4,
            "heldout_fraction": 0.25,
            "min_pairs": 4,
            "shard_users": 8,
            "max_tokens": 48,
        },
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
