"""Prefect flows: what runs in which order, nothing else."""
