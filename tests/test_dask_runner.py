"""Scale-out: teacher batches, student shards, rationale encodings and recommender runs on a
real local Dask cluster (two worker processes) give the same outputs as the default runner."""

import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import e2e_config, task_states
from tests.tiny_llm import build_tiny_llm

pytestmark = pytest.mark.usefixtures("prefect_server")


def whole_pipeline(tmp_path, fake_url, base, runner: str):
    tmp_path.mkdir(parents=True)
    path = e2e_config(tmp_path, fake_url, base)
    config = yaml.safe_load(path.read_text())
    config["student"]["shard_users"] = 4  # four shards: work for both workers
    config["run"]["task_runner"] = runner
    config["teacher"]["batch_size"] = 4  # four batches: work for both workers
    config["recommender"].update(
        variants=["id", "item_text", "item_user_text"],
        rationales=["student", "teacher"],
        text_matching=True,
        text_matching_parts=["full"],
    )
    path.write_text(yaml.safe_dump(config))
    return path


def test_dask_runner_gives_the_default_runners_outputs(tmp_path, fake_openai):
    from flows.pipeline import slim_pipeline
    from flows.runners import with_task_runner

    fake_openai.reset()
    base = build_tiny_llm(tmp_path / "base")
    default = whole_pipeline(tmp_path / "thread", fake_openai.url, base, "thread")
    dask = whole_pipeline(tmp_path / "dask", fake_openai.url, base, "dask")
    flow = with_task_runner(slim_pipeline, str(dask))
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    assert flow.task_runner.cluster_kwargs["n_workers"] == 2

    state = flow(str(dask), return_state=True)
    on_dask = state.result()
    on_thread = with_task_runner(slim_pipeline, str(default))(str(default))
    assert set(task_states(state)) <= {"Completed", "Cached"}

    def answers(out, stage="teacher"):
        rows = pq.read_table(out[stage].rationales).to_pylist()
        return sorted((r["user_idx"], r["cutoff"], r["rationale"]) for r in rows)

    def metrics(out):
        rows = pq.read_table(out["recommenders"].metrics).to_pylist()
        return sorted(
            (
                r["model"],
                r["variant"],
                r["split"],
                r["protocol"],
                round(r["ndcg@10"], 6),
                r["ranks"],
            )
            for r in rows
        )

    assert answers(on_dask) == answers(on_thread) and len(answers(on_dask)) == 16
    assert answers(on_dask, "student") == answers(on_thread, "student")
    summary = on_dask["student"].summary
    assert summary["rationales"] + summary["failed"] == 16 * 3
    assert metrics(on_dask) == metrics(on_thread)
    assert {("sasrec", "item_user_text+teacher")} <= {m[:2] for m in metrics(on_dask)}


def test_the_local_clusters_dashboard_listens_on_loopback_only(tmp_path):
    """Dask's dashboard binds every interface by default (:8787); ours binds 127.0.0.1."""
    from distributed import LocalCluster

    from flows.pipeline import slim_pipeline
    from flows.runners import with_task_runner
    from slim_core.config import RunConfig

    assert RunConfig().dask_dashboard_address.startswith("127.0.0.1:")
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"task_runner": "dask", "dask_dashboard_address": "127.0.0.1:0"},
                "data": {"source": {"format": "table", "interactions": "x.csv"}},
            }
        )
    )
    kwargs = with_task_runner(slim_pipeline, str(path)).task_runner.cluster_kwargs
    with LocalCluster(**kwargs | {"n_workers": 1}) as cluster:
        sockets = cluster.scheduler.http_server._sockets.values()
        hosts = {sock.getsockname()[0] for sock in sockets}
    assert hosts == {"127.0.0.1"}
