"""SLIM's library: data, prompts, LLM backends, distillation, recommenders, metrics, config.

Plain, typed Python with no Prefect import, so that every piece runs and tests on its own.
"""

__version__ = "0.1.0"
