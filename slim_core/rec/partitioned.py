"""A finished run's evaluation split by user partition, on any `concurrent.futures` executor (a
Dask cluster's `client.get_executor()`, or a process pool).

    run = TrainedRun(checkpoint, "sasrec", "id", cfg, ev, data_folder, recommenders_folder)
    metrics = evaluate_partitioned(run, "test", client.get_executor(), partitions=8)

Full ranking scores every item for every user: users x items, the cost that grows fastest with
a log (docs/benchmarks.md, "Scale"). Users are independent, so each partition ranks its own
users' targets with the run's best weights; the caller joins the ranks in user order and takes
the metrics from them: the numbers one process gets, rank for rank. What splits is the scoring;
each partition still loads the whole log's evaluation inputs (sequences, histories, negatives,
user vectors), so use one partition per worker. Documented in docs/operations.md ("The data stage and evaluation on a Dask cluster").
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from slim_core.config import VARIANTS, EvalConfig, RecommenderConfig
from slim_core.rec.metrics import metrics_from_ranks
from slim_core.rec.stage import build_model, load_inputs, sequential_scorer
from slim_core.rec.train import rank_targets, resolve_device


@dataclass(frozen=True)
class TrainedRun:
    """What a worker needs to score with a finished run; every path on storage it can read."""

    checkpoint: Path  # the run's best weights: `<recommenders folder>/checkpoints/<run>.pt`
    model: str  # sasrec, gru4rec or srgnn
    variant: str  # id, item_text or item_user_text
    cfg: RecommenderConfig
    ev: EvalConfig
    data_folder: Path
    recommenders_folder: Path  # the sampled protocol's negatives are kept there
    item_vectors: Path | None = None
    user_vectors: dict[str, Path] | None = None
    source: str | None = None  # which user vectors an item_user_text run read


def evaluate_partitioned(
    run: TrainedRun, split: str, executor: Executor, partitions: int
) -> dict[str, dict[str, float]]:
    """Metrics of `split` per protocol (full, sampled), its users ranked in `partitions` parts."""
    n_users = pq.read_metadata(run.data_folder / "sequences.parquet").num_rows
    bounds = np.linspace(0, n_users, partitions + 1).astype(int).tolist()
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    ranked = list(executor.map(partial(rank_users, run, split), parts))
    return {
        protocol: metrics_from_ranks(torch.cat([r[protocol] for r in ranked]), run.ev.ks)
        for protocol in ranked[0]
    }


def rank_users(run: TrainedRun, split: str, users: slice) -> dict[str, torch.Tensor]:
    """One partition: the 0-based rank of each of `users`' targets, per protocol, in user order."""
    inputs = load_inputs(
        run.cfg, run.ev, run.data_folder, run.recommenders_folder, run.item_vectors,
        run.user_vectors,
    )  # fmt: skip
    model = build_model(run.model, run.variant, inputs.data.n_items, run.cfg, inputs, run.source)
    model.load_state_dict(torch.load(run.checkpoint, weights_only=True)["state_dict"])
    model.to(resolve_device(run.cfg.device)).eval()
    split_inputs = getattr(inputs, split).part(users)
    vectors = inputs.user_index(run.source) if VARIANTS[run.variant].user_text else None
    return rank_targets(
        sequential_scorer(model, split_inputs, vectors),
        split_inputs,
        exclude_history=run.ev.exclude_history,
        negatives=inputs.negatives[split][users],
        batch_size=run.ev.users_per_batch(inputs.data.n_items),
    )
