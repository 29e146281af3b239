"""`slim tune`: Optuna search on the validation split, a study that survives a kill, bad input."""

import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from slim_core.config import load_config
from slim_core.errors import ConfigError
from tests.helpers import REPO, demo_config, spawned, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")
QUICK = {"max_epochs": 4, "patience": 2}
SMALL_SPACE = {
    "lr": {"low": 1e-3, "high": 1e-2, "log": True},
    "dim": {"choices": [16, 32]},
    "dropout": {"low": 0.0, "high": 0.3},
}


def tune_config(tmp_path, name="c.yaml", **tune):
    path = demo_config(tmp_path, name, recommender=QUICK)
    values = yaml.safe_load(path.read_text())
    values["tune"] = {"space": SMALL_SPACE, "pruning_warmup_epochs": 1, **tune}
    path.write_text(yaml.safe_dump(values))
    return path


def study_of(path):
    folder = load_config(path).run.output_dir / "tune" / "sasrec-id"
    return optuna.load_study(study_name="slim-tune", storage=f"sqlite:///{folder / 'study.db'}")


def test_cli_tune_writes_best_settings_and_history_and_resumes(tmp_path):
    from slim_cli.app import app

    path = tune_config(tmp_path)
    first = CliRunner().invoke(app, ["tune", "-c", str(path), "--trials", "2"])
    assert first.exit_code == 0, first.output
    folder = load_config(path).run.output_dir / "tune" / "sasrec-id"
    fragment = yaml.safe_load((folder / "best.yaml").read_text())
    assert set(fragment["recommender"]) == set(SMALL_SPACE)
    assert fragment["recommender"]["dim"] in (16, 32)
    assert 1e-3 <= fragment["recommender"]["lr"] <= 1e-2
    assert (folder / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    study = study_of(path)
    # The configuration's own settings come first, where they lie in the space (dim 64 does not).
    assert study.trials[0].params["lr"] == 1e-3 and study.trials[0].params["dropout"] == 0.2
    assert "validation NDCG@10" in first.output and "recommender:" in first.output

    again = CliRunner().invoke(app, ["tune", "-c", str(path), "--trials", "3"])
    assert again.exit_code == 0, again.output
    assert len(study_of(path).trials) == 3  # one more, not three more


def test_a_killed_search_resumes_from_the_study_on_disk(tmp_path):
    """A real `slim tune` process killed mid-search: the rerun counts what the study already
    holds and runs only the missing trials."""
    path = tune_config(tmp_path, trials=40)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    db = load_config(path).run.output_dir / "tune" / "sasrec-id" / "study.db"
    command = [str(Path(sys.executable).with_name("slim")), "tune", "-c", str(path)]

    def finished_trials() -> int:
        # Read-only: opening the study through Optuna while the process is still creating it
        # would create the schema a second time and fail on alembic_version.
        try:
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                finished = "SELECT count(*) FROM trials WHERE state IN ('COMPLETE','PRUNED','FAIL')"
                return con.execute(finished).fetchall()[0][0]
        except sqlite3.OperationalError:  # no file, no table or a write lock yet
            return 0

    with spawned(command, env=env, cwd=REPO) as process:  # killed with SIGKILL on the way out
        two_finished = wait_until(
            lambda: db.exists() and finished_trials() >= 2, 240, process, interval=1
        )
        assert two_finished and process.poll() is None, "no trial finished before the kill"
    done = sum(t.state.is_finished() for t in study_of(path).trials)
    assert 2 <= done < 40

    from slim_cli.app import app

    resumed = CliRunner().invoke(app, ["tune", "-c", str(path), "--trials", str(done + 1)])
    assert resumed.exit_code == 0, resumed.output
    finished = [t for t in study_of(path).trials if t.state.is_finished()]
    assert len(finished) == done + 1


def test_trials_never_score_the_test_split(tmp_path, monkeypatch):
    from slim_core.data import prepare_data
    from slim_core.rec import stage, tune

    config = load_config(tune_config(tmp_path))
    data = prepare_data(config)
    where = tune.tune_study(config, data.key, None)
    scored = []
    original = stage.evaluate

    def spy(score, inputs, **kwargs):
        scored.append(inputs)
        return original(score, inputs, **kwargs)

    monkeypatch.setattr(stage, "evaluate", spy)
    monkeypatch.setattr(stage, "rank_targets", lambda *a, **k: pytest.fail("test scored"))
    tune.open_study(where, config)
    outcome = tune.run_trial(config, where, data.folder, None)
    assert outcome["state"] == "complete" and 0 < outcome["value"] <= 1
    valid = stage.eval_inputs(stage.load_sequence_data(data.folder), "valid", 50)
    assert scored and all((s.targets == valid.targets).all() for s in scored)


def test_a_study_of_another_configuration_is_refused(tmp_path):
    from slim_core.data import prepare_data
    from slim_core.rec import tune

    config = load_config(tune_config(tmp_path))
    data = prepare_data(config)
    tune.open_study(tune.tune_study(config, data.key, None), config)
    other = config.model_copy(
        update={"evaluation": config.evaluation.model_copy(update={"ks": [5]})}
    )
    with pytest.raises(ConfigError, match="another configuration"):
        tune.open_study(tune.tune_study(other, data.key, None), other)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"space": {}}, "tune.space: .*search space is empty"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "tune.space.lr: .*inverted range"),
        ({"space": {"heads": {"choices": [1, 2]}}}, "cannot search heads"),
        (
            {"model": "gru4rec", "space": {"layers": {"low": 1, "high": 3}}},
            "tune.space: .*gru4rec does not read layers: .*gru_layers",
        ),
        ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"model": "bert4rec"}, "tune.model: .*'sasrec', 'gru4rec' or 'srgnn'"),
    ],
)
def test_bad_search_settings_name_the_field(tmp_path, tune, message):
    path = demo_config(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["tune"] = tune
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_default_search_covers_what_the_backbone_reads():
    from slim_core.config import TuneConfig

    assert {"layers", "dropout"} <= set(TuneConfig(model="sasrec").space)
    assert {"gru_layers", "dropout"} <= set(TuneConfig(model="gru4rec").space)
    assert "layers" not in TuneConfig(model="gru4rec").space
    srgnn = set(TuneConfig(model="srgnn").space)
    assert "gnn_steps" in srgnn and not srgnn & {"layers", "gru_layers", "dropout"}


def test_trials_run_as_prefect_tasks_on_a_dask_cluster(tmp_path):
    """Two Dask worker processes ask the same SQLite study for trials at once."""
    from flows.runners import with_task_runner
    from flows.tune import tune_flow
    from tests.helpers import task_states

    path = tune_config(tmp_path, trials=3)
    values = yaml.safe_load(path.read_text())
    values["run"]["task_runner"] = "dask"
    path.write_text(yaml.safe_dump(values))
    flow = with_task_runner(tune_flow, str(path))
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    state = flow(str(path), return_state=True)
    assert state.result().finished == 3
    assert set(task_states(state)) <= {"Completed", "Cached"}
    trials = study_of(path).trials
    assert len(trials) == 3 and len({tuple(sorted(t.params.items())) for t in trials}) == 3
