"""The whole pipeline on a real Prefect server: loopback teacher -> tiny student -> rationale
vectors -> every recommender variant -> report; then a rerun that loads no LLM and calls no one."""

import gc
import json

import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import E2E_VARIANTS as VARIANTS
from tests.helpers import USERS, flow_run_artifact, task_states
from tests.helpers import e2e_config as write_config
from tests.tiny_llm import build_tiny_llm

pytestmark = pytest.mark.usefixtures("prefect_server")


def named_states(flow_state) -> dict[str, set[str]]:
    """Task run state names by task kind ('train', 'prepare-data', ...) of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])
            )
        )
    out: dict[str, set[str]] = {}
    for run in runs:
        kind = "train" if run.name.startswith("train ") else run.name.rsplit("-", 1)[0]
        out.setdefault(kind, set()).add(run.state.name)
    return out


def test_whole_pipeline_then_cached_rerun(tmp_path, fake_openai, monkeypatch):
    from flows.pipeline import slim_pipeline
    from slim_core.config import load_config
    from slim_core.data import prepare_data
    from slim_core.llm.transformers_local import TransformersBackend
    from slim_core.teacher.stage import teacher_prompts

    path = write_config(tmp_path, fake_openai.url, build_tiny_llm(tmp_path / "base"))
    config = load_config(path)
    hopeless = teacher_prompts(config, prepare_data(config))[0].text
    fake_openai.reset({hopeless: ["bad_steps"] * 20})  # one prompt ends in the dead-letter table
    # The teacher leaves memory before fine-tuning starts, the student before the recommenders
    # (a local teacher was held through fine-tuning and inference once: the demo's peak memory).
    import flows.pipeline
    from slim_core.llm.openai_http import OpenAICompatibleBackend
    from slim_core.student.stage import StudentFineTuning

    def alive(kind: type) -> int:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.get_objects())

    before = {kind: alive(kind) for kind in (OpenAICompatibleBackend, TransformersBackend)}
    seen: dict[str, int] = {}

    def checked(name: str, kind: type, original):
        def call(*args, **kwargs):
            seen[name] = alive(kind) - before[kind]
            return original(*args, **kwargs)

        return call

    finetune, plan = StudentFineTuning.run, flows.pipeline.training_plan
    monkeypatch.setattr(
        StudentFineTuning, "run", checked("teacher", OpenAICompatibleBackend, finetune)
    )
    monkeypatch.setattr(
        flows.pipeline, "training_plan", checked("student", TransformersBackend, plan)
    )
    state = slim_pipeline(str(path), return_state=True)
    out = state.result()
    assert seen == {"teacher": 0, "student": 0}
    monkeypatch.undo()

    # Every stage's artifact, with its schema.
    teacher = pq.read_table(out["teacher"].rationales)
    assert {"user_idx", "cutoff", "step1", "step2", "step3", "tokens_in"} <= set(
        teacher.column_names
    )
    assert teacher.num_rows == 8 * 2 - 1 and out["teacher"].summary["dead_letters"] == 1
    student = pq.read_table(out["student"].rationales)
    assert {"user_idx", "cutoff", "split", "rationale", "latency_s"} <= set(student.column_names)
    assert set(student.column("split").to_pylist()) <= {"train", "valid", "test"}
    encoded = {v.source: v for v in out["rationale_vectors"]}
    assert set(encoded) == {"student", "teacher"}  # `history` is made after item encoding
    for vectors in encoded.values():
        for part in ("full", "step1", "step2", "step3"):
            assert pq.read_schema(vectors.path(part)).names == ["user_idx", "cutoff", "vector"]
    assert (out["student_model"].folder / "adapter").is_dir()
    assert (out["student_model"].folder / "loss.png").is_file()

    # Every variant, per rationale source, and text matching per part.
    metrics = pq.read_table(out["recommenders"].metrics).to_pylist()
    labels = {(r["model"], r["variant"]) for r in metrics}
    expected = {("popularity", "id")}
    for model in ("sasrec", "gru4rec"):
        expected |= {(model, "id"), (model, "item_text")}
        sources = ("student", "teacher", "history", "zeros")
        expected |= {(model, f"{v}+{s}") for v in VARIANTS[2:] for s in sources}
    expected |= {("text_matching", s) for s in ("student", "teacher", "history")}
    expected |= {("text_matching", f"student:step{n}") for n in (1, 2, 3)}
    assert labels == expected
    assert {(r["split"], r["protocol"]) for r in metrics} == {
        (s, p) for s in ("valid", "test") for p in ("full", "sampled")
    }
    assert all(len(r["ranks"]) == USERS for r in metrics)
    # The history control sits at exactly the student's (user, cutoff) pairs with a rationale.
    from storage import RunFolder

    history = RunFolder(tmp_path / "run").current("rationale-vectors-history")
    pairs = {
        (r["user_idx"], r["cutoff"])
        for r in pq.read_table(encoded["student"].path("full")).to_pylist()
        if r["vector"] is not None and r["cutoff"] > 0
    }
    history_rows = pq.read_table(history.file("full.parquet")).to_pylist()
    assert {(r["user_idx"], r["cutoff"]) for r in history_rows} == pairs

    # The report: every row, both protocols, SLIM's gain, sparsity, cost, quality, plots.
    report = out["report"]
    text = report.path.read_text()
    for model, variant in expected:
        assert f"| {model} | {variant} |" in text
    for heading in (
        "SLIM against the best variant without an LLM",
        "Rationale rows against item text and the controls",
        "By history length",
        "Cost and latency",
        "Student quality",
        "Rationales scored zero-shot",
        "Example rationales",
    ):
        assert heading in text
    assert "| sasrec | full | " in text and "| gru4rec | sampled | " in text
    for png in ("ndcg.png", "sparsity.png"):
        assert (report.folder / png).read_bytes()[:4] == b"\x89PNG"
    assert "SLIM report" in flow_run_artifact(state.state_details.flow_run_id, "slim-report")
    for stage in ("teacher", "student", "recommenders"):  # the UI's bars end full
        progress = flow_run_artifact(state.state_details.flow_run_id, f"{stage}-progress")
        assert float(progress) == 100, stage
    calls = sum(fake_openai.calls.values())
    assert calls >= 16

    # The run manifest: traceable to config, data, seeds, software and code.
    (manifest_file,) = (tmp_path / "run" / "flow-runs").glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["flow_run_id"] == str(state.state_details.flow_run_id)
    assert manifest["state"] == "Completed" and manifest["seeds"]["recommender"] == [1]
    assert manifest["data_fingerprint"] == out["data"].key
    assert {"torch", "prefect", "duckdb"} <= set(manifest["versions"])
    assert len(manifest["code"]["commit"]) == 40 and "recommenders" in manifest["stages"]

    # Every rationale scored zero-shot, beside the controls on the same pairs, from the CLI.
    from typer.testing import CliRunner

    from slim_cli.app import app

    scored = CliRunner().invoke(
        app, ["rationales", "score", "-c", str(path), "--json", str(tmp_path / "z.json")]
    )
    assert scored.exit_code == 0, scored.output
    zero_shot = json.loads((tmp_path / "z.json").read_text())["rows"]
    parts = {(r["source"], r["part"]) for r in zero_shot}
    assert {("teacher", "full"), ("student", "full"), ("student", "history")} <= parts
    assert {("teacher", "last_item")} <= parts and "history mean" in scored.output
    assert all(0 <= r["ndcg10"] <= r["hit10"] <= 100 and r["rationales"] > 0 for r in zero_shot)

    # Rerun with nothing changed: no LLM loads, no teacher call (not even for the dead letter:
    # `slim teacher retry-failed` replays those), every task cached or trivial.
    def no_llm(self):
        raise AssertionError("an LLM was loaded on a cached rerun")

    monkeypatch.setattr(TransformersBackend, "load", no_llm)
    again = slim_pipeline(str(path), return_state=True)
    rerun = again.result()
    assert sum(fake_openai.calls.values()) == calls
    assert set(task_states(again)) <= {"Completed", "Cached"}
    results = rerun["report"].path.read_text().split("## Cost and latency")[0]
    assert results == text.split("## Cost and latency")[0]
    states = named_states(again)
    assert states["prepare-data"] == {"Cached"} and states["train"] == {"Cached"}
    # the student's fine-tuning and the rationale encodings are stages too: Cached, not re-run
    assert states["student-finetune"] == {"Cached"}
    # and so are the LLM's batches: every prompt in them is answered (or failed) on disk
    for kind in ("teacher batch", "student shard"):
        batches = [state for name, state in states.items() if name.startswith(kind)]
        assert batches and set().union(*batches) == {"Cached"}, kind
    assert states["encode student rationales"] == states["encode-items"] == {"Cached"}

    # A recommender setting changes: the recommenders train again, nothing before them does.
    changed = yaml.safe_load(path.read_text())
    changed["recommender"]["max_epochs"] = 1
    path.write_text(yaml.safe_dump(changed))
    third = slim_pipeline(str(path), return_state=True)
    assert third.is_completed() and sum(fake_openai.calls.values()) == calls
    states = named_states(third)
    assert states["prepare-data"] == {"Cached"} and states["train"] == {"Completed"}
    assert third.result()["recommenders"].folder != out["recommenders"].folder
