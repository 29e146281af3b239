"""Selected distillation data: learn from the teacher answers that point at what came next.

At a training cutoff the next item is known, so each teacher answer there can be scored the way
`slim_core.rationale_score` scores any rationale: the rank of that item among all items, by
cosine between the answer's text vector and the item text vectors, history excluded. With
`student.select: top_fraction` the student trains on the best-ranked `select_fraction` of those
answers; with `best_of_k` (and `teacher.samples: k`), on the best of the k answers to each
prompt (in the spirit of STaR and distilling step by step). Answers at later cutoffs, whose next
item is a validation or test target, and held-out pairs are kept as they are: selection never
looks at an item a recommender is evaluated on, and only shapes the student's training pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slim_core.encoding import TextEncoder
from slim_core.rationale_score import zero_shot_ranks
from slim_core.rec.data import SequenceData
from slim_core.student.pairs import Pair


@dataclass(frozen=True)
class Selection:
    pairs: list[Pair]  # what the student trains and is scored on, in the original order
    candidates: int  # training-cutoff answers that were ranked
    kept: int
    median_rank_kept: float | None
    median_rank_dropped: float | None


def _training_cutoff(data: SequenceData) -> Callable[[Pair], bool]:
    """Whether a pair may be selected: not held out, and its next item lies before the user's
    validation item (`SequenceData.cutoff`), so choosing by it looks at no evaluation target."""
    row_of = {int(user): row for row, user in enumerate(data.user_idx.tolist())}
    return lambda p: (
        not p.heldout
        and p.user_idx in row_of
        and p.cutoff < data.cutoff(row_of[p.user_idx], "valid")
    )


def select_top_fraction(
    pairs: list[Pair],
    data: SequenceData,
    item_vectors: np.ndarray,
    encoder: TextEncoder,
    fraction: float,
) -> Selection:
    """Keep the best-ranked `fraction` of the training-cutoff answers; every other pair stays."""
    trainable = _training_cutoff(data)
    candidates = [n for n, p in enumerate(pairs) if trainable(p)]
    if not candidates:
        return Selection(pairs, 0, 0, None, None)
    vectors = encoder.encode([pairs[n].completion for n in candidates])
    keys = [(pairs[n].user_idx, pairs[n].cutoff) for n in candidates]
    ranks = zero_shot_ranks(vectors, keys, data, item_vectors)
    order = np.argsort(ranks, kind="stable")
    keep = max(1, math.ceil(fraction * len(candidates)))
    dropped = {candidates[i] for i in order[keep:]}
    kept_ranks, dropped_ranks = ranks[order[:keep]], ranks[order[keep:]]
    return Selection(
        [p for n, p in enumerate(pairs) if n not in dropped],
        len(candidates),
        keep,
        float(np.median(kept_ranks)),
        float(np.median(dropped_ranks)) if dropped_ranks.size else None,
    )


def select_best_of_k(
    pairs: list[Pair],
    other_samples: list[Pair],
    data: SequenceData,
    item_vectors: np.ndarray,
    encoder: TextEncoder,
) -> Selection:
    """For each training-cutoff pair, the best-ranked of its answers (the first sample in
    `pairs`, the others in `other_samples`); every other pair stays as it is."""
    trainable = _training_cutoff(data)
    firsts = {(p.user_idx, p.cutoff): n for n, p in enumerate(pairs) if trainable(p)}
    options = [pairs[n] for n in firsts.values()] + [
        p for p in other_samples if (p.user_idx, p.cutoff) in firsts
    ]
    if not options:
        return Selection(pairs, 0, 0, None, None)
    vectors = encoder.encode([p.completion for p in options])
    ranks = zero_shot_ranks(vectors, [(p.user_idx, p.cutoff) for p in options], data, item_vectors)
    best: dict[tuple[int, int], tuple[int, Pair]] = {}
    for option, rank in zip(options, ranks.tolist(), strict=True):
        key = (option.user_idx, option.cutoff)
        if key not in best or rank < best[key][0]:  # ties keep the first sample
            best[key] = (rank, option)
    chosen = {firsts[key]: pair for key, (_, pair) in best.items()}
    kept_ranks = [rank for rank, _ in best.values()]
    return Selection(
        [chosen.get(n, p) for n, p in enumerate(pairs)],
        len(options),
        len(best),
        float(np.median(kept_ranks)),
        None,
    )
