"""Hyper-parameter search for one backbone with Optuna: TPE sampling, median pruning, a study
that survives a kill.

`slim tune` searches `tune.space` for `tune.model` / `tune.variant` on the validation split
only: early stopping and the objective both read validation NDCG@10, and the test split is never
scored. The study lives in SQLite in the run folder (`tune/<model>-<variant>/study.db`), so a
killed search resumes where it stopped, and trials in several processes (Prefect tasks on Dask
workers) share it. The first trial is the configuration's own settings, so the best found is
never worse on validation than what the configuration already had.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from slim_core.config import RecommenderConfig, SearchRange, SlimConfig
from slim_core.errors import ConfigError
from slim_core.rec.stage import fit_sequential, load_inputs
from storage import RunFolder, canonical_hash

log = logging.getLogger("slim_core.rec")

STUDY_NAME = "slim-tune"


@dataclass(frozen=True)
class TuneStudy:
    """Where a search lives, and the key of the configuration it was made for."""

    folder: Path
    key: str

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.folder / 'study.db'}"


@dataclass(frozen=True)
class TuneResult:
    folder: Path
    finished: int
    pruned: int
    best_value: float
    best_trial: int
    best_params: dict[str, Any]
    fragment: str  # YAML to paste into the configuration

    @property
    def best_yaml(self) -> Path:
        return self.folder / "best.yaml"

    @property
    def history_png(self) -> Path:
        return self.folder / "history.png"


def tune_study(config: SlimConfig, data_key: str, item_vectors_key: str | None) -> TuneStudy:
    """The study of this configuration: one folder per backbone and variant, keyed by everything
    a trial's score depends on except the number of trials (asking for more resumes)."""
    tune, rec = config.tuning, config.recommender
    fixed = rec.result_settings(exclude=set(tune.space))
    key = canonical_hash(
        {
            "data": data_key,
            "item_vectors": item_vectors_key if tune.variant == "item_text" else None,
            "recommender": fixed,
            "evaluation": config.evaluation.result_settings(),
            "tune": tune.model_dump(mode="json", exclude={"trials"}),
        }
    )
    folder = RunFolder(config.run.output_dir).root / "tune" / f"{tune.model}-{tune.variant}"
    return TuneStudy(folder, key)


def open_study(where: TuneStudy, config: SlimConfig) -> optuna.Study:
    """Create or load the study; refuse one made for another configuration."""
    tune = config.tuning
    where.folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=optuna.storages.RDBStorage(
            where.storage, engine_kwargs={"connect_args": {"timeout": 60}}
        ),
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=tune.pruning_warmup_epochs
        ),
        direction="maximize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get("config_key")
    if stored is None:
        study.set_user_attr("config_key", where.key)
        study.set_user_attr("model", tune.model)
        study.set_user_attr("variant", tune.variant)
        current = _current_values(config.recommender, tune.space)
        if current:  # the configuration's own settings come first
            study.enqueue_trial(current)
    elif stored != where.key:
        raise ConfigError(
            f"{where.folder / 'study.db'} holds a search made for another configuration (its key "
            f"{stored}, this configuration's {where.key}: the data, the fixed settings, the "
            "evaluation or the search space differ). Move or delete that folder to start a new "
            "search, or tune with the configuration that made it"
        )
    return study


def _current_values(rec: RecommenderConfig, space: dict[str, SearchRange]) -> dict[str, Any]:
    values = {}
    for name, search in space.items():
        value = getattr(rec, name)
        inside = (
            value in search.choices
            if search.choices is not None
            else search.low <= value <= search.high
        )
        if inside:
            values[name] = value
    return values


def suggest(trial: optuna.Trial, space: dict[str, SearchRange]) -> dict[str, Any]:
    """One value per searched setting."""
    params: dict[str, Any] = {}
    for name, search in space.items():
        integer = RecommenderConfig.model_fields[name].annotation is int
        if search.choices is not None:
            choices = [int(c) if integer else float(c) for c in search.choices]
            params[name] = trial.suggest_categorical(name, choices)
        elif integer:
            params[name] = trial.suggest_int(
                name, int(search.low), int(search.high), log=search.log
            )
        else:
            params[name] = trial.suggest_float(name, search.low, search.high, log=search.log)
    return params


def finished_trials(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def run_trial(
    config: SlimConfig, where: TuneStudy, data_folder: Path, item_vectors: Path | None
) -> dict[str, Any]:
    """Ask the study for settings, train on them, tell it the best validation NDCG@10."""
    tune = config.tuning
    study = open_study(where, config)
    # A seed per trial, so that trials asked in parallel processes differ and a resumed search
    # does not propose the points it already tried.
    study.sampler = optuna.samplers.TPESampler(seed=tune.seed + len(study.trials))
    trial = study.ask()
    params = suggest(trial, tune.space)
    rec = RecommenderConfig.model_validate(
        config.recommender.model_dump()
        | params
        | {"models": [tune.model], "variants": [tune.variant], "seeds": [tune.seed]}
        | {"text_matching": False, "zero_vector_control": False, "user_vectors": None}
    )
    if rec.threads:
        torch.set_num_threads(rec.threads)
    inputs = load_inputs(
        rec, config.evaluation, data_folder, where.folder / "inputs", item_vectors, None
    )

    def report(epoch: int, score: float) -> None:
        trial.report(score, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    try:
        _, _, result = fit_sequential(
            tune.model, tune.variant, tune.seed, rec, config.evaluation, inputs, on_epoch=report
        )
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        log.info("tune trial %d pruned: %s", trial.number, params)
        return {"number": trial.number, "state": "pruned", "params": params}
    except Exception:
        study.tell(trial, state=TrialState.FAIL)
        raise
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("epochs", result.epochs_run)
    study.tell(trial, result.best_valid_ndcg)
    log.info(
        "tune trial %d: valid NDCG@10 %.4f (best epoch %d) with %s",
        trial.number,
        result.best_valid_ndcg,
        result.best_epoch,
        params,
    )
    return {"number": trial.number, "state": "complete", "value": result.best_valid_ndcg}


def summarise(config: SlimConfig, where: TuneStudy) -> TuneResult:
    """Best settings as a YAML fragment (`best.yaml`) and the search history (`history.png`)."""
    study = open_study(where, config)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        raise ConfigError(f"no trial of {where.folder} finished: nothing to report")
    best = study.best_trial
    tune = config.tuning
    header = (
        f"# slim tune: {tune.model} / {tune.variant}, best of {finished_trials(study)} trials "
        f"(trial {best.number}, validation NDCG@10 {100 * best.value:.2f}%)\n"
    )
    fragment = header + yaml.safe_dump({"recommender": best.params}, sort_keys=False)
    (where.folder / "best.yaml").write_text(fragment, encoding="utf-8")
    _plot_history(study, where.folder / "history.png", f"{tune.model} / {tune.variant}")
    return TuneResult(
        folder=where.folder,
        finished=finished_trials(study),
        pruned=sum(t.state == TrialState.PRUNED for t in study.trials),
        best_value=float(best.value),
        best_trial=best.number,
        best_params=dict(best.params),
        fragment=fragment,
    )


def _plot_history(study: optuna.Study, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_optimization_history(
            study, target_name="validation NDCG@10"
        )
    axes.set_title(f"slim tune: {title}")
    axes.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(axes.figure)
