"""Prefect tasks: thin wrappers that give `slim_core` functions caching, retries and artifacts.

One task per shard of work, never one per LLM call: a Prefect task costs milliseconds.
"""

import logging
import os

# slim_core logs through the standard `logging` module; let Prefect forward those records to
# the run's logs (console and UI). Must be set before Prefect configures logging on import.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "slim_core")
# slim_core is a library too: its logs outside a flow run stay local instead of warning.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("slim_core").setLevel(logging.INFO)
