"""The data stage through Prefect (a real temporary server) and through the `slim` CLI."""

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import demo_config, flow_run_artifact, task_states

pytestmark = pytest.mark.usefixtures("prefect_server")
# Recommender settings that keep flow tests to seconds (the demo's own settings train for minutes).
QUICK = {"models": ["sasrec"], "variants": ["id", "item_text"], "max_epochs": 2, "seeds": [1]}


def test_flow_caches_by_inputs_and_recomputes_on_change(tmp_path):
    from flows.pipeline import prepare_flow

    path = demo_config(tmp_path)
    first = prepare_flow(str(path), return_state=True)
    result = first.result()
    assert task_states(first) == ["Completed"]
    sequences = result.path("sequences")
    written = sequences.stat().st_mtime_ns

    again = prepare_flow(str(path), return_state=True)
    assert task_states(again) == ["Cached"]
    assert again.result().folder == result.folder
    assert sequences.stat().st_mtime_ns == written  # nothing rewritten

    changed = demo_config(tmp_path, "changed.yaml", k_core_items=2)
    other = prepare_flow(str(changed), return_state=True)
    assert task_states(other) == ["Completed"]
    assert other.result().folder != result.folder
    assert result.folder.is_dir()  # the older result is kept beside the new one

    # A cache entry whose folder was deleted must not be trusted.
    for file in result.folder.iterdir():
        file.unlink()
    rebuilt = prepare_flow(str(path), return_state=True)
    assert task_states(rebuilt) == ["Completed"]
    assert rebuilt.result().path("sequences").is_file()


def test_flow_saves_resolved_config_and_summary_artifact(tmp_path, monkeypatch):
    from flows.pipeline import slim_pipeline
    from slim_core.config import load_config

    monkeypatch.setenv("SLIM_DATA__MAX_HISTORY", "20")
    path = demo_config(tmp_path, recommender={**QUICK, "variants": ["id"], "max_epochs": 1})
    state = slim_pipeline(str(path), return_state=True)
    results = state.result()
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.max_history == 20  # the environment override is what was run
    assert results["data"].stats["stored_sequence_length"]["max"] <= 21
    manifest = yaml.safe_load((results["data"].folder / "manifest.json").read_text())
    assert {"inputs", "config", "config_hash", "versions", "files", "key"} <= set(manifest)
    assert all(len(fp["blake2b"]) == 32 for fp in manifest["inputs"])
    assert "| users |" in flow_run_artifact(state.state_details.flow_run_id, "data-summary")


def test_cli_prepare_prints_summary(tmp_path):
    from slim_cli.app import app

    outcome = CliRunner().invoke(app, ["prepare", "--config", str(demo_config(tmp_path))])
    assert outcome.exit_code == 0, outcome.output
    assert "Data stage" in outcome.output and "sequence length" in outcome.output
    assert str(tmp_path / "run") in outcome.output.replace("\n", "")

    query = CliRunner().invoke(
        app, ["query", "-c", str(tmp_path / "c.yaml"), "SELECT count(*) AS n FROM sequences"]
    )
    assert query.exit_code == 0, query.output
    assert "497" in query.output

    # The real command, piped as a user would: --limit and --format, names never cut.
    import json
    import subprocess
    import sys

    slim = str(Path(sys.executable).parent / "slim")
    sql = "SELECT user_idx, count(*) AS n FROM interactions GROUP BY 1 ORDER BY 1"
    config = str(tmp_path / "c.yaml")

    def piped(*args: str) -> str:
        done = subprocess.run([slim, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    csv_rows = piped("query", "-c", config, sql, "--limit", "3", "--format", "csv").splitlines()
    assert csv_rows[0] == "user_idx,n" and len(csv_rows) == 4
    records = json.loads(piped("query", "-c", config, sql, "-n", "2", "-f", "json"))
    assert [set(r) for r in records] == [{"user_idx", "n"}] * 2
    listed = piped("models", "list")
    assert "qwen2.5-coder-1.5b-instruct" in listed and "…" not in listed


def test_slim_query_only_reads_and_a_modified_artifact_is_recomputed(tmp_path):
    """`slim query` could write (`COPY ... TO` over the current sequences), read any file and
    attach databases; and a stage folder whose artifact was overwritten was reused as a hit."""
    import duckdb

    from slim_cli.app import app
    from storage import RunFolder

    path = str(demo_config(tmp_path))
    assert CliRunner().invoke(app, ["prepare", "-c", path]).exit_code == 0
    sequences = RunFolder(tmp_path / "run").current("data").file("sequences.parquet")
    size = sequences.stat().st_size
    secret = tmp_path / "secret.csv"
    secret.write_text("a\nsecret\n")
    for sql, says in [
        (f"COPY (SELECT 1 AS a) TO '{sequences}' (FORMAT parquet)", "COPY statements are refused"),
        ("SET enable_external_access = true", "SET statements are refused"),
        (f"ATTACH '{tmp_path / 'x.db'}' AS x", "ATTACH statements are refused"),
        (f"SELECT * FROM read_csv('{secret}')", "disabled by configuration"),
        ("SELECT 1 AS a; INSTALL httpfs", "LOAD statements are refused"),
        (
            f"EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{sequences}' (USE_TMP_FILE false)",
            "EXPLAIN ANALYZE statements are refused",
        ),
    ]:
        refused = CliRunner().invoke(app, ["query", "-c", path, sql])
        assert refused.exit_code == 2 and says in refused.output, (sql, refused.output)
    assert sequences.stat().st_size == size and not (tmp_path / "x.db").exists()
    explain = CliRunner().invoke(app, ["query", "-c", path, "EXPLAIN SELECT * FROM items"])
    assert explain.exit_code == 0, explain.output

    # Overwritten behind SLIM's back: the stage folder no longer counts as complete.
    duckdb.sql(f"COPY (SELECT * FROM '{sequences}' LIMIT 1) TO '{sequences}' (FORMAT parquet)")
    assert not RunFolder(tmp_path / "run").stage("data", sequences.parent.name).is_complete()
    assert CliRunner().invoke(app, ["prepare", "-c", path]).exit_code == 0
    count = CliRunner().invoke(app, ["query", "-c", path, "SELECT count(*) FROM sequences"])
    assert "497" in count.output, count.output


def test_cli_reports_errors_without_traceback(tmp_path):
    from slim_cli.app import app

    missing = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2
    assert "configuration file not found" in missing.output and "Traceback" not in missing.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "data:\n  source: {format: table, interactions: " + str(tmp_path / "gone.csv") + "}\n"
    )
    outcome = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert outcome.exit_code == 2
    assert "gone.csv" in outcome.output and "file not found" in outcome.output


def assert_same_scores(rows: list[dict], expected: list[dict]) -> None:
    """Retrained runs match up to float noise: CPU kernels may sum in another order, which
    moves a metric in its 8th digit and, rarely, one rank where two scores nearly tie."""
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        names = ("model", "variant", "seed", "split", "protocol")
        assert [row[k] for k in names] == [want[k] for k in names]
        for key, value in want.items():
            if isinstance(value, float) and "seconds" not in key:
                assert row[key] == pytest.approx(value, abs=1e-4), (names, key)
        same = sum(a == b for a, b in zip(row["ranks"], want["ranks"], strict=True))
        assert same >= 0.99 * len(want["ranks"])


def test_train_flow_trains_evaluates_and_caches(tmp_path):
    from flows.pipeline import train_flow

    path = demo_config(tmp_path, recommender=QUICK)
    first = train_flow(str(path), return_state=True)
    result = first.result()["recommenders"]
    states = task_states(first)
    assert states.count("Completed") == len(states)  # data, encoding, 3 runs, evaluation
    assert len(states) == 6
    models = {(r["model"], r["variant"]) for r in result.rows}
    assert models == {("popularity", "id"), ("sasrec", "id"), ("sasrec", "item_text")}
    assert {r["protocol"] for r in result.rows} == {"full", "sampled"}
    for name in ("metrics.parquet", "ndcg.png", "negatives.parquet", "summary.md"):
        assert (result.folder / name).is_file(), name
    summary = flow_run_artifact(first.state_details.flow_run_id, "recommender-results")
    assert "| sasrec | item_text |" in summary
    table = flow_run_artifact(first.state_details.flow_run_id, "recommender-results-table")
    assert "'variant': 'item_text'" in table or '"variant": "item_text"' in table
    # the UI's progress bar for the stage ends full
    for stage in ("encode", "recommenders"):
        assert float(flow_run_artifact(first.state_details.flow_run_id, f"{stage}-progress")) == 100

    again = train_flow(str(path), return_state=True)
    states = task_states(again)
    assert states.count("Cached") == 5  # everything but the cheap evaluation task
    assert again.result()["recommenders"].rows == result.rows

    # Deleting a run's checkpoint makes that run (and only that run) train again.
    (result.folder / "checkpoints" / "sasrec-id-1.pt").unlink()
    third = train_flow(str(path), return_state=True)
    assert task_states(third).count("Cached") == 4
    assert (result.folder / "checkpoints" / "sasrec-id-1.pt").is_file()

    # The whole output folder deleted: every stage is computed again, none trusts its cache.
    shutil.rmtree(tmp_path / "run")
    fourth = train_flow(str(path), return_state=True)
    assert "Cached" not in task_states(fourth)
    assert_same_scores(fourth.result()["recommenders"].rows, result.rows)  # same seeds


def test_train_flow_runs_in_worker_processes_with_the_same_results(tmp_path):
    """`recommender.workers: 2` trains the runs in spawned processes: their logs reach this
    process, no worker outlives the flow, and the rows equal one-at-a-time training in the same
    stage folder (workers is no part of the stage key)."""
    import logging
    import multiprocessing
    import os

    from flows.pipeline import train_flow

    quick = {**QUICK, "threads": 1}
    records: list[logging.LogRecord] = []
    catch = logging.Handler()
    catch.emit = records.append
    logging.getLogger("slim_core.rec").addHandler(catch)
    try:
        path = demo_config(tmp_path, recommender={**quick, "workers": 2})
        result = train_flow(str(path))["recommenders"]
    finally:
        logging.getLogger("slim_core.rec").removeHandler(catch)
    trained = {r.process for r in records if "best valid NDCG@10" in r.getMessage()}
    assert trained and os.getpid() not in trained  # two runs, logged from the workers
    assert not multiprocessing.active_children()  # the pool closed with the flow's runtime

    shutil.rmtree(result.folder / "checkpoints")  # train again, one run at a time
    expected = train_flow(str(demo_config(tmp_path, recommender=quick)))["recommenders"]
    assert expected.folder == result.folder
    assert_same_scores(result.rows, expected.rows)


def test_cli_train_and_evaluate(tmp_path):
    from slim_cli.app import app

    path = demo_config(tmp_path, recommender={**QUICK, "variants": ["id"]})
    missing = CliRunner().invoke(app, ["results", "-c", str(path)])
    assert missing.exit_code == 2 and "run `slim train` first" in missing.output
    trained = CliRunner().invoke(app, ["train", "-c", str(path)])
    assert trained.exit_code == 0, trained.output
    shown = CliRunner().invoke(app, ["results", "-c", str(path)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    renamed = CliRunner().invoke(app, ["evaluate", "-c", str(path)], env={"COLUMNS": "250"})
    assert renamed.exit_code == 0 and "sasrec" in renamed.output  # the old name still works
    assert "sasrec" in shown.output and "popularity" in shown.output and "ndcg.png" in shown.output


def test_cli_train_on_a_config_with_llm_sections_trains_the_rest_and_says_so(tmp_path):
    """`slim train -c configs/demo.yaml` failed with exit 2 after encoding the items, asking for
    teacher and student sections that were configured: it runs no LLM, so it now trains the
    variants that need none and names what it leaves to `slim run`, decided before any work."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    slim = str(Path(sys.executable).parent / "slim")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    quick = ["--set", "recommender.models=[sasrec]", "--set", "recommender.seeds=[1]"]
    quick += ["--set", "recommender.max_epochs=1", "--set", f"run.output_dir={tmp_path / 'run'}"]

    def train(*extra: str) -> subprocess.CompletedProcess:
        command = [slim, "train", "-c", "configs/demo.yaml", *quick, *extra]
        return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)

    trained = train()
    output = trained.stdout + trained.stderr
    assert trained.returncode == 0, output
    assert "skipping item_user_text, text matching" in output
    assert "sasrec/id/1: epoch 1, loss" in output  # not a terminal: every epoch is logged
    assert "sasrec" in trained.stdout and "item_text" in trained.stdout
    nothing = train("--set", "recommender.variants=[item_user_text]", "--set", "run.name=x")
    assert nothing.returncode == 2 and "does not make" in nothing.stdout, nothing.stdout


def test_cli_train_tracks_to_mlflow(tmp_path):
    """`tracking.mlflow: true`: the run's settings, each recommender run's epochs and test
    metrics, and the results as artifacts, in a SQLite store in the run folder."""
    import os
    import subprocess
    import sys

    import mlflow

    slim = str(Path(sys.executable).parent / "slim")
    path = demo_config(tmp_path, recommender={**QUICK, "variants": ["id"], "max_epochs": 2})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run(
        [slim, "train", "-c", str(path), "--set", "tracking.mlflow=true"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name.startswith("train demo-")]
    assert parent.data.params["recommender.max_epochs"] == "2"
    child = next(r for r in runs if r.info.run_name == "sasrec-id-1")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    epochs = client.get_metric_history(child.info.run_id, "valid_ndcg_at_10")
    assert [m.step for m in epochs] == [1, 2]
    assert 0 <= child.data.metrics["test_full_ndcg_at_10"] <= 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "recommenders")}
    assert {"recommenders/metrics.parquet", "recommenders/ndcg.png"} <= artifacts
