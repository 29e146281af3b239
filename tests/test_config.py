from pathlib import Path

import pytest
import yaml

from slim_core.config import load_config
from slim_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = load_config(REPO / "configs" / name)
    assert config.data.source.format in {
        "recbole_atomic",
        "recbole_sequence",
        "amazon_reviews",
        "table",
    }


def test_demo_config_points_at_bundled_data():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.run.name == "demo"
    for path in [*config.data.source.sequences, config.data.source.item_text]:
        assert (REPO / path).is_file(), path


@pytest.mark.parametrize("name", ["demo", "ml-100k", "scientific", "paper-scale"])
def test_shipped_configs_run_every_stage(name):
    config = load_config(REPO / "configs" / f"{name}.yaml")
    if name != "paper-scale":  # the paper-scale file names the user's own data and models
        assert config.student is not None and config.teacher is not None
        assert "item_user_text" in config.recommender.variants


def test_environment_overrides_yaml(monkeypatch, write):
    path = write(
        "c.yaml", "data:\n  source: {format: table, interactions: a.csv}\n  k_core_users: 4\n"
    )
    monkeypatch.setenv("SLIM_DATA__K_CORE_USERS", "9")
    monkeypatch.setenv("SLIM_DATA__SOURCE__INTERACTIONS", "/elsewhere/b.csv")
    monkeypatch.setenv("SLIM_RUN__SEED", "7")
    config = load_config(path)
    assert config.data.k_core_users == 9
    assert config.data.source.interactions == Path("/elsewhere/b.csv")
    assert config.data.source.format == "table"  # the rest of the nested section is kept
    assert config.run.seed == 7


def test_resolved_config_round_trips(write):
    path = write("c.yaml", "data:\n  source: {format: recbole_atomic, interactions: a.inter}\n")
    config = load_config(path)
    again = load_config(write("resolved.yaml", config.to_yaml()))
    assert again == config
    assert yaml.safe_load(config.to_yaml())["data"]["k_core_items"] == 5  # defaults are written out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "data:\n  source: {format: table, interactions: a.csv}\n  k_core_itemz: 3\n",
            "data.k_core_itemz: Extra inputs are not permitted",
        ),
        (
            "data:\n  source: {format: table, interactions: a.csv}\n  k_core_items: lots\n",
            "data.k_core_items: Input should be a valid integer",
        ),
        (
            "data:\n  source: {format: table, interactions: a.csv}\n  max_history: 0\n",
            "data.max_history: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            "data:\n  source: {format: excel, interactions: a.xls}\n",
            "data.source: Input tag 'excel'",
        ),
        ("data:\n  source: {format: table}\n", "data.source.table.interactions: Field required"),
        ("run: {name: x}\n", "data: Field required"),
        (
            "data:\n  source: {format: table, interactions: a.csv}\n"
            "student: {base_model: m, max_tokens: 128, step_tokens: 40}\n",
            "student: Value error, step_tokens 40: three steps and their headers need up to 138 "
            "tokens, more than max_tokens 128; lower step_tokens to 36 or raise max_tokens",
        ),
        (
            "data:\n  source: {format: table, interactions: a.csv}\n"
            "student: {base_model: m, backend: vllm, step_tokens: 30}\n",
            "step_tokens is implemented by the transformers backend only",
        ),
    ],
)
def test_invalid_config_names_the_field(write, text, expected):
    path = write("bad.yaml", text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_config_file_problems(write, tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write("broken.yaml", "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write("list.yaml", "- a\n- b\n"))


def test_environment_override_is_validated_and_named(monkeypatch, write):
    path = write("c.yaml", "data:\n  source: {format: table, interactions: a.csv}\n")
    monkeypatch.setenv("SLIM_DATA__K_CORE_USERS", "-2")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "data.k_core_users" in str(error.value)
    assert "SLIM_DATA__K_CORE_USERS" in str(error.value)


def test_cli_version_short_help_set_and_yaml_list_overrides(tmp_path):
    """Through the real `slim` command: `--version`, `-h` everywhere, `--set key.path=value`,
    and `SLIM_*` lists written as in the YAML file (JSON only, and a pydantic traceback with
    rc 1, before)."""
    import os
    import subprocess
    import sys

    slim = str(Path(sys.executable).parent / "slim")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("SLIM_RECOMMENDER__MODELS", None)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [slim, *args], env=env | extra, capture_output=True, text=True, timeout=300
        )

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("slim 0.")
    for args in (["-h"], ["run", "-h"], ["teacher", "run", "-h"]):
        shown = cli(*args)
        assert shown.returncode == 0 and "Usage: slim" in shown.stdout, args
    demo = str(REPO / "configs" / "demo.yaml")
    listed = cli("config", "-c", demo, SLIM_RECOMMENDER__MODELS="[gru4rec, srgnn]")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert yaml.safe_load(listed.stdout)["recommender"]["models"] == ["gru4rec", "srgnn"]
    given = cli("config", "-c", demo, "--set", "recommender.seeds=[4, 5]", "--set", "run.seed=7")
    assert given.returncode == 0, given.stdout + given.stderr
    resolved = yaml.safe_load(given.stdout)
    assert resolved["recommender"]["seeds"] == [4, 5] and resolved["run"]["seed"] == 7
    for bad, expected in (("nope.x=1", "no section 'nope'"), ("run.seed", "key.path=value")):
        refused = cli("config", "-c", demo, "--set", bad)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
    broken = cli("config", "-c", demo, SLIM_RECOMMENDER__MODELS="[gru4rec")
    assert broken.returncode == 2 and "Traceback" not in broken.stdout + broken.stderr
    assert "SLIM_RECOMMENDER__MODELS: not valid YAML or JSON" in broken.stdout


def test_settings_shown_in_tags_and_tracking_carry_no_credentials(monkeypatch):
    from flows.identity import overrides
    from slim_core.tracking import flat_params, redacted_setting

    assert redacted_setting("tracking.uri", "postgresql://mlflow:pw@db:5432/x") == (
        "postgresql://<redacted>@db:5432/x"
    )
    assert redacted_setting("teacher.base_url", "https://h/v1?api-key=k") == "https://h/v1"
    assert redacted_setting("teacher.api_token", "abc") == "<redacted>"
    assert redacted_setting("recommender.lr", 0.001) == "0.001"
    monkeypatch.setenv("SLIM_TRACKING__URI", "postgresql://mlflow:pw@db/x")
    monkeypatch.setenv("SLIM_SHARED_DATA", "/not/a/setting")
    assert overrides() == ["tracking.uri=postgresql://<redacted>@db/x"]
    params = flat_params({"teacher": {"base_url": "https://u:p@h/v1", "model": "m"}})
    assert params == {"teacher.base_url": "https://<redacted>@h/v1", "teacher.model": "m"}
