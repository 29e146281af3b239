"""A flow-run hook that writes the run manifest (storage/run_manifest.py) when a flow ends.

Declared on every flow for every end state (completed, failed, crashed, cancelled): a run stopped
by SIGTERM is traceable too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import yaml

from slim_core.config import load_config
from slim_core.errors import SlimError
from storage import RunFolder, code_version, write_run_manifest

log = logging.getLogger("slim_core.manifest")


def record_flow_run(flow, flow_run, state) -> None:
    """Hook: write `<output_dir>/flow-runs/<started>-<id>.json` for this flow run."""
    path = flow_run.parameters.get("config_path")
    if path is None:
        return
    try:
        config = load_config(path)
    except SlimError:  # the run failed on its configuration: nothing to trace it to
        return
    run_folder = RunFolder(config.run.output_dir)
    # as this run resolved it, with its parameters (config.yaml may be another run's by now)
    saved = run_folder.flow_run_config(str(flow_run.id))
    if not saved.is_file():
        saved = run_folder.root / "config.yaml"
    resolved = (
        yaml.safe_load(saved.read_text()) if saved.is_file() else config.model_dump(mode="json")
    )
    code = run_folder.flow_run_code(str(flow_run.id))
    written = write_run_manifest(
        run_folder,
        flow=flow.name,
        flow_run_id=str(flow_run.id),
        started=flow_run.start_time or datetime.now(UTC),
        config=resolved,
        seeds={"run": config.run.seed, "recommender": config.recommender.seeds},
        data_key=run_folder.read_manifest().get("stages", {}).get("data"),
        parameters={k: v for k, v in flow_run.parameters.items() if v is not None},
        state=state.name,
        code=yaml.safe_load(code.read_text()) if code.is_file() else code_version(),
    )
    log.info("run manifest: %s", written)
