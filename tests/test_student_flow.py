"""The student flows on a real Prefect server: teacher (loopback endpoint) -> fine-tuning ->
sharded inference, then `slim regenerate` after three users' histories change."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import USERS, data_section, flow_run_artifact, interaction_log, task_states
from tests.tiny_llm import build_tiny_llm

pytestmark = pytest.mark.usefixtures("prefect_server")


def write_config(tmp_path: Path, fake_url: str, base: Path) -> Path:
    config = {
        "run": {"name": "student-test", "output_dir": str(tmp_path / "run")},
        "data": data_section(tmp_path),
        "teacher": {
            "backend": "openai",
            "model": "teacher-test",
            "base_url": fake_url,
            "api_key_env": None,
            "users": USERS,
            "cutoffs": ["valid"],  # no recommender reads them here: one prompt per user
            "batch_size": 8,
        },
        "student": {
            "base_model": str(base),
            "sft": {"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4},
            "heldout_fraction": 0.25,
            "shard_users": 4,
            "max_tokens": 8,
            "cutoffs": ["valid", "test"],
        },
    }
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_student_flow_then_regenerate_only_changed_users(tmp_path, fake_openai):
    from flows.pipeline import regenerate_flow, student_flow
    from slim_cli.app import app

    fake_openai.reset()
    base = build_tiny_llm(tmp_path / "base")
    path = write_config(tmp_path, fake_openai.url, base)

    with pytest.raises(Exception, match="run `slim student run` first"):
        regenerate_flow(str(path))

    state = student_flow(str(path), return_state=True)
    results = state.result()
    assert results["teacher"].summary["answered"] == USERS
    states = task_states(state)
    assert set(states) <= {"Completed", "Cached"}  # the data stage ran (failed flow) before
    assert sum(1 for s in states) >= 1 + 2 + 1 + 4 + 1  # data, teacher, sft, 4 shards, write
    quality = results["student_model"].quality
    assert set(quality) >= {"before", "after"} and quality["after"]["pairs"] >= 1
    assert "ROUGE-L" in flow_run_artifact(state.state_details.flow_run_id, "student-quality")
    summary = results["student"].summary
    assert summary["rationales"] + summary["failed"] == USERS * 2
    calls_after_first = sum(fake_openai.calls.values())

    # Three users buy more: `slim regenerate` (a CLI run of the flow) redoes only their prompts.
    (tmp_path / "log.csv").write_text(interaction_log({2: 1, 7: 2, 11: 1}))
    outcome = CliRunner().invoke(app, ["regenerate", "--config", str(path)])
    assert outcome.exit_code == 0, outcome.output
    saved = json.loads((tmp_path / "run" / "student" / "summary.json").read_text())
    assert (saved["generated_this_run"], saved["reused"]) == (4, USERS * 2 - 4)  # see test_student
    assert sum(fake_openai.calls.values()) == calls_after_first  # no teacher call, no training


def test_a_setting_trl_refuses_stops_the_run_before_the_teacher(tmp_path, fake_openai):
    """student.sft goes to TRL's SFTConfig as it is: a setting it does not have fails the CLI
    run at its start, naming the section, before any teacher prompt is paid for."""
    from slim_cli.app import app

    fake_openai.reset()
    path = write_config(tmp_path, fake_openai.url, tmp_path / "no-model-needed")
    config = yaml.safe_load(path.read_text())
    config["student"]["sft"]["warmup_stepz"] = 3
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["student", "run", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert "student.sft" in result.output and "warmup_stepz" in result.output
    assert sum(fake_openai.calls.values()) == 0
