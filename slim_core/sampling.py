"""Choosing the users whose rationales the teacher writes (the paper: 1,000-2,000 are enough)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_users(
    lengths: Sequence[int], count: int, seed: int = 0, strata: int = 5
) -> np.ndarray:
    """Row indices of `count` users, spread over history-length quantile groups like the whole set.

    Users are put in `strata` groups by history length (equal-size groups by rank); each group
    gives a share of the sample proportional to its size (largest remainders), so short and long
    histories are both represented. Deterministic for a seed; sorted.
    """
    lengths = np.asarray(lengths)
    if count >= len(lengths):
        return np.arange(len(lengths))
    rng = np.random.default_rng(seed)
    order = np.argsort(lengths, kind="stable")
    groups = np.array_split(order, min(strata, len(lengths)))
    exact = np.array([count * len(g) / len(lengths) for g in groups])
    shares = np.floor(exact).astype(int)
    for n in np.argsort(-(exact - shares), kind="stable")[: count - shares.sum()]:
        shares[n] += 1
    picked = [
        rng.choice(g, size=k, replace=False) for g, k in zip(groups, shares, strict=True) if k
    ]
    return np.sort(np.concatenate(picked))
