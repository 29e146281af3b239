"""What a flow run ran with, how it shows in the Prefect UI, and the run folder it holds.

Every run used to be named `train configs/demo.yaml`, and what changed it (`SLIM_*` overrides,
`--set`) lived only in `flow-runs/*.json`. Now a run is named by its configuration's name and a
short hash of the resolved configuration (the manifest's `config_hash`), and tagged with `slim`,
the configuration's name, the hash, the stages it runs and each override.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from prefect.runtime import flow_run

from slim_core.config import VARIANTS, SlimConfig, load_config, uses_user_vectors
from slim_core.errors import ConfigError, SlimError
from slim_core.tracking import redacted_setting
from storage import canonical_hash

log = logging.getLogger("slim_core.storage")  # under slim_core: its lines reach Prefect


RESOLVED_PARAMETERS = ("config_path", "teacher_users", "student_users", "budget_usd")


def resolve(
    config_path: str,
    teacher_users: int | None = None,
    student_users: int | None = None,
    budget_usd: float | None = None,
    without_llm: bool = False,
) -> SlimConfig:
    """The configuration file with environment overrides and the run's parameters applied (what
    deployments let users change per run); `without_llm` for `slim train` (see below)."""
    return with_parameters(
        load_config(config_path), teacher_users, student_users, budget_usd, without_llm
    )


def with_parameters(
    config: SlimConfig,
    teacher_users: int | None = None,
    student_users: int | None = None,
    budget_usd: float | None = None,
    without_llm: bool = False,
) -> SlimConfig:
    """`config` with the run's parameters applied (see `resolve`)."""
    if without_llm:
        config = without_llm_rows(config)
    teacher = {"users": teacher_users, "budget_usd": budget_usd}
    for section, values in (("teacher", teacher), ("student", {"users": student_users})):
        values = {k: v for k, v in values.items() if v is not None}
        current = getattr(config, section)
        if values and current is None:
            raise ConfigError(f"{', '.join(values)} given, but the configuration has no {section}")
        if values:
            setattr(config, section, type(current).model_validate(current.model_dump() | values))
    return config


def skipped_without_llm(config: SlimConfig) -> list[str]:
    """What `slim train` leaves to `slim run`: rows that read the pipeline's rationales."""
    rec = config.recommender
    if rec.user_vectors is not None or not uses_user_vectors(rec):
        return []
    return [v for v in rec.variants if VARIANTS[v].user_text] + (
        ["text matching"] if rec.text_matching else []
    )


def without_llm_rows(config: SlimConfig) -> SlimConfig:
    """`slim train` runs no LLM: of a configuration whose user-side rows read the pipeline's
    rationales, it trains the rest. Decided before any work (it used to fail after encoding)."""
    rec = config.recommender
    if not skipped_without_llm(config):
        return config
    kept = [v for v in rec.variants if not VARIANTS[v].user_text]
    if not kept:
        raise ConfigError(
            f"recommender.variants {rec.variants} all read rationale vectors, which `slim train` "
            "does not make: run `slim run` (teacher and student sections), set "
            "recommender.user_vectors to your own Parquet, or add id / item_text variants"
        )
    config.recommender = rec.model_copy(update={"variants": kept, "text_matching": False})
    return config


def config_hash(config: SlimConfig) -> str:
    """The run manifest's `config_hash` of this resolved configuration."""
    return canonical_hash(config.model_dump(mode="json"))


def run_name(kind: str, without_llm: bool = False) -> Callable[[], str]:
    """A flow's `flow_run_name`: `<kind> <config name>-<8 hex of the resolved config>`."""

    def name() -> str:
        parameters: dict[str, Any] = flow_run.parameters
        try:
            values = {k: v for k, v in parameters.items() if k in RESOLVED_PARAMETERS}
            config = resolve(**values, without_llm=without_llm)
        except SlimError:  # the run fails on it with the full message; still a readable name
            return f"{kind} {parameters.get('config_path')}"
        return f"{kind} {config.run.name}-{config_hash(config)[:8]}"

    return name


def overrides() -> list[str]:
    """`SLIM_*` environment overrides (and `--set`, which sets them) as `key.path=value`, with
    credentials taken out (tags are readable by everyone with access to the UI)."""
    sections = tuple(f"SLIM_{name.upper()}__" for name in SlimConfig.model_fields)
    items = []
    for name, value in os.environ.items():
        if name.startswith(sections):
            key = name[5:].lower().replace("__", ".")
            items.append(f"{key}={redacted_setting(key, value)}")
    return sorted(items)


def tag_flow_run(config: SlimConfig, stages: Sequence[str]) -> list[str]:
    """Add `slim`, the configuration's name and hash, its stages and overrides to this flow run's
    tags (the UI filters by them); returns the tags added."""
    tags = ["slim", f"config:{config.run.name}", f"config-hash:{config_hash(config)[:8]}"]
    tags += [f"stage:{stage}" for stage in stages]
    tags += [f"set:{item}"[:200] for item in overrides()]
    run_id = flow_run.id
    if run_id is None:
        return tags
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(run_id).tags
            client.update_flow_run(run_id, tags=list(dict.fromkeys([*current, *tags])))
    except Exception as error:  # tags are for people: never fail a run over them
        log.warning("could not tag flow run %s: %s", run_id, error)
    return tags


@contextmanager
def run_folder_slot(config: SlimConfig) -> Iterator[None]:
    """Hold the run folder: a Prefect global concurrency limit of 1 named by the folder, so two
    runs (two deployments' schedules, a CLI run beside a deployment run on one server) never
    write the same run folder at once; the second waits for the first."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    folder = str(config.run.output_dir.resolve())
    name = f"slim-run-folder-{canonical_hash(folder, 12)}"

    # another run may make it between the upsert's read and its write (not atomic)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    # The lease is renewed while the run lives; a killed run's slot is free a minute later.
    with concurrency(
        name, occupy=1, lease_duration=60, strict=True, raise_on_lease_renewal_failure=False
    ):
        yield


def one_run_per_folder(function: Callable) -> Callable:
    """For a flow's function whose first parameter is `config_path`: its body holds the run
    folder (`run_folder_slot`) from start to end, on a standing server (`PREFECT_API_URL`:
    deployments, workers, the UI); a process on its own temporary server has no one to wait
    for there, and the run folder's file lock still guards its manifest."""

    @functools.wraps(function)
    def holding(config_path: str, *args: Any, **kwargs: Any) -> Any:
        from prefect.settings import get_current_settings

        if get_current_settings().api.url is None:  # a temporary server of this process alone
            return function(config_path, *args, **kwargs)
        with run_folder_slot(load_config(config_path)):
            return function(config_path, *args, **kwargs)

    return holding


def flows_version() -> str:
    """A hash of the flows' source files: Prefect's flow version."""
    from pathlib import Path

    sources = sorted(Path(__file__).parent.glob("*.py"))
    return canonical_hash([p.read_text(encoding="utf-8") for p in sources], 12)
