"""Prefect flows: what runs in which order, nothing else."""

# Prefect reads its logging settings when it is first imported: `tasks` sets them (SLIM's own
# `slim_core` log lines go to the run's logs in the UI), so it comes before any flow module's
# Prefect import. Imported later, a CLI run's SLIM lines reached the console but not the UI.
import tasks  # noqa: F401
