"""Operations: `slim server` as a real process that flows report to, deployments registered on
a real server, the work-pool `prefect.yaml`, and retention of old runs and stage folders."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import REPO, demo_config, spawned, wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SLIM = str(Path(sys.executable).parent / "slim")


@pytest.fixture(scope="module")
def slim_server(tmp_path_factory):
    """`slim server` as a real process on a free loopback port; yields (api url, environment)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    api = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with spawned([SLIM, "server", "--port", str(port)], env=env, stop=signal.SIGTERM) as server:
        assert wait_until(healthy, 120, server, interval=1), "slim server did not start"
        yield api, {**env, "PREFECT_API_URL": api}


def run_cli(env: dict, *args: str) -> None:
    run = subprocess.run([SLIM, *args], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def flow_run_named(api: str, prefix: str) -> dict:
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    (run,) = [r for r in runs if r["name"].startswith(prefix)]
    return run


def artifacts_of(api: str, flow_run_id: str) -> list[dict]:
    return httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()


def test_slim_server_receives_a_flow_run_with_its_task_runs_and_artifacts(tmp_path, slim_server):
    api, env = slim_server
    run_cli(env, "prepare", "--config", str(demo_config(tmp_path)), "--set", "data.max_history=40")
    flow_run = flow_run_named(api, "prepare ")
    assert flow_run["state"]["type"] == "COMPLETED"
    # Told apart in the UI: the config's name and hash, tags for the stages and the override.
    manifest = json.loads(next((tmp_path / "run" / "flow-runs").glob("*.json")).read_text())
    assert flow_run["name"] == f"prepare demo-{manifest['config_hash'][:8]}"
    # the commit it started with, saved when it started (the tree may move while it runs)
    started_with = tmp_path / "run" / "flow-runs" / f"{flow_run['id']}.code.yaml"
    assert manifest["code"] == yaml.safe_load(started_with.read_text())
    assert len(manifest["code"]["commit"]) == 40
    assert {"slim", "config:demo", "stage:data", "set:data.max_history=40"} <= set(flow_run["tags"])
    # SLIM's own log lines reach the run's logs on the server, not only the console (Prefect was
    # imported before `tasks` set its logging; the tests' conftest set it too and hid that).
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}},
        timeout=10,
    ).json()
    assert {"slim_core.data", "slim_core.manifest"} <= {line["name"] for line in logs}
    task_runs = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run["id"]]}}},
        timeout=10,
    ).json()
    assert [t["state"]["type"] for t in task_runs] == ["COMPLETED"]
    artifacts = artifacts_of(api, flow_run["id"])
    assert [a["key"] for a in artifacts] == ["data-summary"]
    assert "| users |" in artifacts[0]["data"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def browse(url: str, *extra: str, cwd: Path) -> str:
    """The DOM of `url` after the UI's scripts ran (or a screenshot, with --screenshot=...)."""
    run = subprocess.run(
        [
            CHROMIUM,
            *BROWSER_FLAGS,
            "--virtual-time-budget=20000",
            "--window-size=1400,1000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_ui_shows_the_run_and_its_results_artifact(tmp_path, slim_server):
    api, env = slim_server
    quick = {"variants": ["id"], "models": ["gru4rec"], "seeds": [1], "max_epochs": 2}
    run_cli(env, "train", "--config", str(demo_config(tmp_path, recommender=quick)))
    flow_run = flow_run_named(api, "train ")
    (results,) = [a for a in artifacts_of(api, flow_run["id"]) if a["key"] == "recommender-results"]
    ui = api.removesuffix("/api")

    run_url = f"{ui}/runs/flow-run/{flow_run['id']}"
    page = browse(run_url, "--dump-dom", cwd=tmp_path)
    assert flow_run["name"] in page
    assert "[4/4] sealing the stage folder" in page  # SLIM's own log lines, in the run's logs
    assert "gru4rec/id/1: epoch 2, loss" in page  # those of a worker process (workers: 2) too
    (progress,) = [
        a for a in artifacts_of(api, flow_run["id"]) if a["key"] == "recommenders-progress"
    ]
    assert float(progress["data"]) == 100
    artifact_url = f"{ui}/artifacts/artifact/{results['id']}"
    page = browse(artifact_url, "--dump-dom", cwd=tmp_path)
    assert "Recommenders: test split" in page and "gru4rec" in page
    assert '<img src="data:image/png;base64,' in page  # the NDCG@10 chart, in the artifact
    browse(artifact_url, f"--screenshot={tmp_path / 'artifact.png'}", cwd=tmp_path)
    shot = (tmp_path / "artifact.png").read_bytes()
    assert shot[:4] == b"\x89PNG" and len(shot) > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
        (REPO / "docs" / "ui-results-artifact.png").write_bytes(shot)
        for url, name in (
            (run_url, "ui-run-logs.png"),
            (f"{ui}/artifacts/artifact/{progress['id']}", "ui-progress-artifact.png"),
        ):
            browse(url, f"--screenshot={REPO / 'docs' / name}", cwd=tmp_path)


@pytest.mark.usefixtures("prefect_server")
def test_deployments_register_with_schedule_and_parameters(tmp_path):
    from prefect.client.orchestration import get_client

    from flows.deployments import deployments

    path = demo_config(tmp_path, "ops.yaml")
    with get_client(sync_client=True) as client:
        for deployment in deployments(path, "15 4 * * *"):
            deployment.apply()
        pipeline = client.read_deployment_by_name("slim-pipeline/pipeline-ops")
        regenerate = client.read_deployment_by_name("slim-regenerate/regenerate-ops")
        retry = client.read_deployment_by_name("slim-teacher-retry-failed/retry-failed-ops")
    assert pipeline.parameters == {"config_path": str(path.resolve())}
    # What users change per run in the UI besides the file: users and budget.
    assert {"config_path", "teacher_users", "student_users", "budget_usd"} <= set(
        pipeline.parameter_openapi_schema["properties"]
    )
    assert "budget_usd" in retry.parameter_openapi_schema["properties"]
    assert [s.schedule.cron for s in regenerate.schedules] == ["15 4 * * *"]
    assert [s.schedule.timezone for s in regenerate.schedules] == ["UTC"]
    assert retry.schedules == [] and pipeline.schedules == []


def test_prefect_yaml_names_real_flows_and_parameters():
    import importlib
    import inspect

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        module_path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, function)
        assert set(deployment["parameters"]) <= set(inspect.signature(flow.fn).parameters)
        assert (REPO / deployment["parameters"]["config_path"]).is_file()
        names.add(deployment["name"])
    # the names `slim serve -c configs/demo.yaml` gives, schedules with an explicit time zone
    from flows.deployments import deployment_name

    kinds = ("pipeline", "regenerate", "retry-failed")
    assert names == {deployment_name(kind, "configs/demo.yaml") for kind in kinds}
    schedules = [s for d in spec["deployments"] for s in d.get("schedules", [])]
    assert schedules and all(s.get("timezone") for s in schedules)


def _killed_writers_leftover(folder: Path) -> Path:
    """The temporary file a writer killed with SIGKILL leaves (its process is gone)."""
    import subprocess
    import sys

    writer = (
        "import os, signal, sys\n"
        "from storage import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'x' * 100_000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(folder / "x.parquet")], check=False)
    [leftover] = folder.glob(".x.parquet.*.tmp")
    return leftover


@pytest.mark.usefixtures("prefect_server")
def test_prune_old_runs_artifacts_and_stage_folders(tmp_path):
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    from flows.pipeline import prepare_flow
    from slim_cli.app import app
    from storage import RunFolder

    first = demo_config(tmp_path, "a.yaml")
    old = prepare_flow(str(first), return_state=True)
    run = RunFolder(tmp_path / "run")
    killed_writer = _killed_writers_leftover(run.current("data").path)
    changed = demo_config(tmp_path, "a.yaml", k_core_items=2)  # a new data folder is current
    prepare_flow(str(changed), return_state=True)
    assert not killed_writer.exists()  # the next run removed it
    killed_writer = _killed_writers_leftover(run.current("data").path)
    folders = sorted((run.root / "data").iterdir())
    assert len(folders) == 2
    current = run.read_manifest()["stages"]["data"]
    paid = run.root / "teacher" / "cache" / "answers" / "batch.parquet"
    paid.parent.mkdir(parents=True)
    paid.write_bytes(b"paid for")
    old_time = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    for folder in folders:
        os.utime(folder / "manifest.json", (old_time, old_time))

    from prefect import flow

    @flow(name="another-project")
    def another_project() -> None:
        """Someone else's flow on the same server: prune must leave it alone."""

    theirs = another_project(return_state=True).state_details.flow_run_id
    dry = CliRunner().invoke(
        app, ["prune", "-c", str(changed), "--older-than-days", "0", "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and len(list((run.root / "data").iterdir())) == 2

    assert "1 temporary file(s)" in " ".join(dry.output.split()) and killed_writer.exists()

    done = CliRunner().invoke(app, ["prune", "-c", str(changed), "--older-than-days", "0"])
    assert done.exit_code == 0, done.output
    assert not killed_writer.exists()
    assert [p.name for p in (run.root / "data").iterdir()] == [current]
    assert paid.read_bytes() == b"paid for"
    with get_client(sync_client=True) as client:
        from prefect.exceptions import ObjectNotFound

        with pytest.raises(ObjectNotFound):
            client.read_flow_run(old.state_details.flow_run_id)
        assert client.read_flow_run(theirs).name  # another project's run is still there


def test_docker_files_lint_and_compose_is_consistent():
    """Docker cannot run here: lint the Dockerfiles, check the compose file's structure and that
    every path an image copies exists."""
    hadolint = Path(sys.executable).parent / "hadolint"
    dockerfiles = sorted((REPO / "docker").glob("*.Dockerfile"))
    assert [p.name for p in dockerfiles] == ["cpu.Dockerfile", "gpu.Dockerfile"]
    lint = subprocess.run(
        [str(hadolint), "--no-color", *map(str, dockerfiles)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for dockerfile in dockerfiles:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (REPO / source).exists(), f"{dockerfile.name}: {source}"

    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker-cpu", "vllm", "worker-gpu"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        build = service.get("build")
        if build:
            assert (REPO / "docker" / build["context"] / build["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"]
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")

    # No container runs as root, no secret has a default, vLLM needs a key the workers have.
    for dockerfile in dockerfiles:
        users = [
            line.split()[1]
            for line in dockerfile.read_text().splitlines()
            if line.startswith("USER ")
        ]
        assert users and users[-1] not in ("root", "0"), dockerfile.name
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "POSTGRES_PASSWORD:-" not in text
    assert services["vllm"]["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")
    assert services["worker-cpu"]["environment"]["VLLM_API_KEY"].startswith("${VLLM_API_KEY:?")
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)
    assert (
        services["worker-cpu"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    )

    # Every service restarts; workers and vLLM say when they are healthy; task results (the
    # caches) live on a volume; each image holds what its default deployment reads.
    assert all(service.get("restart") == "unless-stopped" for service in services.values())
    for name in ("worker-cpu", "worker-gpu", "vllm"):
        assert "/health" in " ".join(services[name]["healthcheck"]["test"]), name
    for name, dockerfile in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        results = services[name]["environment"]["PREFECT_LOCAL_STORAGE_PATH"]
        assert f"results:{results}" in services[name]["volumes"], name
        text = (REPO / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert '"--with-healthcheck"]' in text, dockerfile
        copied = {line.split()[1] for line in text.splitlines() if line.startswith("COPY ")}
        demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["data"]["source"]
        for path in [demo["item_text"], *demo["sequences"]]:
            assert path.split("/")[0] in copied, (dockerfile, path)


def test_run_parameters_override_the_configuration_and_are_saved(tmp_path):
    from flows.pipeline import _load
    from slim_core.config import load_config
    from slim_core.errors import ConfigError

    path = demo_config(tmp_path)  # no teacher or student sections
    with pytest.raises(ConfigError, match="no teacher"):
        _load(str(path), teacher_users=5)
    values = yaml.safe_load(path.read_text())
    values["teacher"] = {"model": "m", "users": 100}
    values["student"] = {"base_model": "b"}
    path.write_text(yaml.safe_dump(values))
    config = _load(str(path), teacher_users=5, student_users=7, budget_usd=1.5)
    assert (config.teacher.users, config.teacher.budget_usd, config.student.users) == (5, 1.5, 7)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.teacher.users, saved.student.users) == (5, 7)


def test_two_configurations_on_one_output_folder_each_keep_their_own_in_the_run_manifest(
    tmp_path,
):
    """config.yaml is the latest run's; each flow run's manifest records the configuration it
    ran (it read config.yaml, which another configuration's run may have rewritten)."""
    import json

    from flows.pipeline import prepare_flow

    first = prepare_flow(str(demo_config(tmp_path, "a.yaml")), return_state=True)
    second = prepare_flow(str(demo_config(tmp_path, "b.yaml", k_core_items=2)), return_state=True)
    manifests = {}
    for path in (tmp_path / "run" / "flow-runs").glob("*.json"):
        manifest = json.loads(path.read_text())
        manifests[manifest["flow_run_id"]] = manifest["config"]["data"]["k_core_items"]
    assert manifests == {
        str(first.state_details.flow_run_id): 3,
        str(second.state_details.flow_run_id): 2,
    }


def test_two_runs_on_one_run_folder_take_turns_on_a_standing_server(tmp_path, slim_server):
    """Two deployment or CLI runs on one server never write the same run folder at once: the
    second waits on a concurrency limit named by the folder until the first ends."""
    api, env = slim_server
    quick = {"variants": ["id"], "models": ["sasrec"], "seeds": [1, 2], "max_epochs": 3}
    path = str(demo_config(tmp_path, recommender=quick))
    log = tmp_path / "first.log"
    with spawned([SLIM, "train", "-c", path], env=env, log=log) as first:
        holding = wait_until(lambda: runs_of(api, path, "train "), 300, first, interval=0.5)
        assert holding, log.read_text()[-3000:]  # the first run holds the folder
        run_cli(env, "prepare", "-c", path)
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    (trained,), (prepared,) = runs_of(api, path, "train "), runs_of(api, path, "prepare ")
    train_end = max(t["end_time"] for t in task_runs_of(api, trained["id"]))
    prepare_start = min(t["start_time"] for t in task_runs_of(api, prepared["id"]))
    assert prepare_start >= train_end  # ISO timestamps in UTC compare as strings


def runs_of(api: str, config_path: str, prefix: str) -> list[dict]:
    """This test's flow runs (the server is shared by the module's tests)."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    return [
        r
        for r in runs
        if r["name"].startswith(prefix) and r["parameters"].get("config_path") == config_path
    ]


def task_runs_of(api: str, flow_run_id: str) -> list[dict]:
    return httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()
