"""Ranking metrics for leave-one-out evaluation, full ranking and sampled candidates.

Ranks are 0-based. Ties count against the target (pessimistic): a model that scores every
item the same gets the worst rank, never a lucky hit. Column 0 of a score matrix is padding and
is never a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check(scores: torch.Tensor) -> None:
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")


def full_ranks(
    scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank of each target among items 1..n (scores [B, n+1], targets [B], history [B, L] or None).

    Items in `history` (0 = padding) are not candidates when given; the target always is.
    """
    _check(scores)
    others = torch.ones_like(scores, dtype=torch.bool)
    others[:, 0] = False
    if history is not None:
        others.scatter_(1, history, False)
    others.scatter_(1, targets[:, None], False)
    return ((scores >= scores.gather(1, targets[:, None])) & others).sum(dim=1)


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Rank of each target among itself and its sampled negatives ([B, k]) from full scores."""
    _check(scores)
    target_scores = scores.gather(1, targets[:, None])
    negative_scores = scores.gather(1, negatives)
    return (negative_scores >= target_scores).sum(dim=1)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Mean NDCG@k and Hit@k for every k, and MRR (no cutoff)."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"ndcg@{k}"] = float(
            torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks)).mean()
        )
        out[f"hit@{k}"] = float(hit.double().mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one run) of each metric over seeds."""
    out = {}
    for name in runs[0]:
        values = [run[name] for run in runs]
        mean = sum(values) / len(values)
        std = (
            math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            if len(values) > 1
            else 0.0
        )
        out[name] = (mean, std)
    return out
