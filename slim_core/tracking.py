"""Optional experiment tracking with MLflow, the convention recommender and LLM engineers use.

One MLflow run per pipeline (or train) run, named like the Prefect flow run, with:
- params: the resolved configuration, flattened (`recommender.lr`, `teacher.model`, ...);
- one nested run per recommender run (`sasrec-item_text-1`): its per-epoch training loss and
  validation NDCG@10 (step = epoch), and its test metrics under both protocols;
- artifacts: the results table, metrics, the report and its plots.

The student's fine-tuning reports to the same tracking URI and experiment through TRL's own
`report_to="mlflow"` (`environment()` is what it reads). Off unless `tracking.mlflow: true`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from slim_core.config import SlimConfig
from slim_core.errors import ConfigError

TEST_METRICS = ("ndcg@10", "hit@10", "hit@20", "mrr")


def tracking_uri(config: SlimConfig) -> str:
    return config.tracking.uri or f"sqlite:///{config.run.output_dir.resolve() / 'mlflow.db'}"


def experiment_name(config: SlimConfig) -> str:
    return config.tracking.experiment or config.run.name


def environment(config: SlimConfig) -> dict[str, str]:
    """What TRL's MLflow callback reads: the same store and experiment as the pipeline's run."""
    if not config.tracking.mlflow:
        return {}
    return {
        "MLFLOW_TRACKING_URI": tracking_uri(config),
        "MLFLOW_EXPERIMENT_NAME": experiment_name(config),
    }


SECRET_WORDS = ("password", "secret", "token")


def redacted_setting(key: str, value: Any) -> str:
    """A setting's value as it may be shown (MLflow params, flow-run tags): a URL without its
    user, password and query (`postgresql://mlflow:pw@db/x`, `...?api-key=`), and nothing of a
    setting whose name says it is a secret."""
    text = str(value)
    if any(word in key.lower() for word in SECRET_WORDS):
        return "<redacted>"
    if "://" in text:
        parts = urlsplit(text)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        hidden = "<redacted>@" if parts.username or parts.password else ""
        text = urlunsplit((parts.scheme, hidden + netloc, parts.path, "", ""))
    return text


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`, credentials out; MLflow params are strings of at
    most 6,000 characters."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat_params(value, f"{name}.")
        else:
            out[name] = redacted_setting(name, value)[:6000]
    return out


@contextmanager
def tracking_environment(config: SlimConfig) -> Iterator[None]:
    """`environment(config)` set while open (TRL's MLflow callback reads it), then restored."""
    values = environment(config)
    if values:
        _experiment(config)  # made here with its artifacts in the run folder, not by TRL
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _experiment(config: SlimConfig):
    """MLflow, pointed at the configured store and experiment (made if missing, its artifacts
    in the run folder with the default store)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(config))
    name = experiment_name(config)
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = config.run.output_dir.resolve() / "mlflow-artifacts"
        location = artifacts.as_uri() if config.tracking.uri is None else None
        with suppress(mlflow.exceptions.MlflowException):  # made meanwhile by another run
            mlflow.create_experiment(name, artifact_location=location)
    mlflow.set_experiment(name)
    return mlflow


def _mlflow():
    try:
        import mlflow
    except ImportError as error:
        raise ConfigError(
            "tracking.mlflow: true needs MLflow: pip install -e '.[mlflow]'"
        ) from error
    return mlflow


class Tracker:
    """The pipeline's MLflow run; a no-op when tracking is off."""

    def __init__(self, mlflow: Any | None) -> None:
        self.mlflow = mlflow

    def log_recommender_runs(self, rows: list[dict[str, Any]]) -> None:
        """A nested run per (model, variant, seed): per-epoch history and test metrics."""
        if self.mlflow is None:
            return
        runs: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            runs.setdefault((row["model"], row["variant"], row["seed"]), []).append(row)
        for (model, variant, seed), parts in runs.items():
            name = f"{model}-{variant}" + ("" if seed is None else f"-{seed}")
            with self.mlflow.start_run(run_name=name, nested=True):
                self.mlflow.log_params({"model": model, "variant": variant, "seed": seed})
                history = next((p["history"] for p in parts if p.get("history")), None) or []
                for epoch in history:
                    step = int(epoch["epoch"])
                    self.mlflow.log_metric("train_loss", float(epoch["loss"]), step=step)
                    self.mlflow.log_metric(
                        "valid_ndcg_at_10", float(epoch["valid_ndcg@10"]), step=step
                    )
                for part in parts:
                    if part["split"] != "test":
                        continue
                    for metric in TEST_METRICS:
                        if metric in part:
                            key = f"test_{part['protocol']}_{metric.replace('@', '_at_')}"
                            self.mlflow.log_metric(key, float(part[metric]))

    def log_files(self, folder: Path, names: tuple[str, ...], artifact_path: str) -> None:
        """The named files of a stage folder (never its checkpoints: one per run and seed)."""
        if self.mlflow is None:
            return
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                self.mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextmanager
def tracked_run(config: SlimConfig, run_name: str) -> Iterator[Tracker]:
    """The MLflow run around a pipeline run (or a no-op Tracker when tracking is off)."""
    if not config.tracking.mlflow:
        yield Tracker(None)
        return
    mlflow = _experiment(config)
    with mlflow.start_run(run_name=run_name):
        mlflow.log_params(flat_params(config.model_dump(mode="json")))
        yield Tracker(mlflow)
