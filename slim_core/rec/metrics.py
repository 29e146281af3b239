"""Ranking metrics for leave-one-out evaluation, full ranking and sampled candidates.

Ranks are 0-based. Ties count against the target (pessimistic): rank = number of other
candidates scoring >= the target, so a model that scores every item the same gets the worst
rank, never a lucky hit. Column 0 of a score matrix is padding and is never a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Validate scores [B, n_items + 1] and targets [B] (ids 1..n_items); return targets [B, 1]."""
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(
            f"expected scores [B, n+1] and targets [B], got {tuple(scores.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    targets = targets.long()
    if targets.numel() and (targets.min() < 1 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must be item ids 1..{scores.shape[1] - 1}")
    return targets[:, None]


def full_ranks(
    scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None
) -> torch.Tensor:
    """0-based rank of each target among items 1..n (scores [B, n+1], targets [B]).

    Items in `history` ([B, L], 0 = padding) are not candidates when given; the target always is.
    """
    target_col = _check(scores, targets)
    others = torch.ones_like(scores, dtype=torch.bool)
    others[:, 0] = False
    if history is not None:
        others.scatter_(1, history.long(), False)
    others.scatter_(1, target_col, False)
    return ((scores >= scores.gather(1, target_col)) & others).sum(dim=1)


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """0-based rank of each target among itself and its negatives [B, k], gathered from full scores.

    Negatives must be item ids 1..n other than the target (a broken artifact raises ValueError).
    """
    target_col = _check(scores, targets)
    negatives = negatives.long()
    if negatives.dim() != 2 or negatives.shape[0] != scores.shape[0]:
        raise ValueError(f"expected negatives [B, k], got {tuple(negatives.shape)}")
    if negatives.numel() and (negatives.min() < 1 or negatives.max() >= scores.shape[1]):
        raise ValueError(f"negatives must be item ids 1..{scores.shape[1] - 1}")
    if (negatives == target_col).any():
        raise ValueError("a negative equals its row's target")
    return (scores.gather(1, negatives) >= scores.gather(1, target_col)).sum(dim=1)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Means over users of `ndcg@k` and `hit@k` for every k, and `mrr` (no cutoff)."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).mean())
        out[f"hit@{k}"] = float(hit.double().mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """(mean, sample std with ddof=1; 0.0 for one run) of each metric over seeds."""
    if not runs:
        raise ValueError("no runs to summarize")
    out: dict[str, tuple[float, float]] = {}
    for name in runs[0]:
        values = [run[name] for run in runs]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[name] = (mean, math.sqrt(var))
    return out
