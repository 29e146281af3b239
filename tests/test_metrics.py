"""Ranking metrics against hand-computed cases: ranks, ties, excluded history, sampled protocol."""

import math

import pytest
import torch

from slim_core.rec.metrics import full_ranks, metrics_from_ranks, sampled_ranks, summarize_runs

# Column 0 is padding (a huge score that must never count). Items 1..5 per user:
#   user 0: 0.9 0.5 0.7 0.1 0.3
#   user 1: 0.2 0.8 0.6 0.4 0.0
SCORES = torch.tensor(
    [
        [9.0, 0.9, 0.5, 0.7, 0.1, 0.3],
        [9.0, 0.2, 0.8, 0.6, 0.4, 0.0],
    ]
)


def test_small_matrix_by_hand():
    # user 0, target 3 (0.7): only item 1 (0.9) is higher -> rank 1
    # user 1, target 1 (0.2): items 2, 3, 4 (0.8, 0.6, 0.4) are higher -> rank 3
    ranks = full_ranks(SCORES, torch.tensor([3, 1]))
    assert ranks.tolist() == [1, 3]
    got = metrics_from_ranks(ranks, ks=(10, 20))
    # NDCG@10 = (1/log2(1+2) + 1/log2(3+2)) / 2 = (0.63093 + 0.43068) / 2
    assert got["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)
    assert got["ndcg@20"] == pytest.approx(got["ndcg@10"])  # both ranks are < 10
    assert got["hit@10"] == 1.0 and got["hit@20"] == 1.0
    # MRR = (1/2 + 1/4) / 2 = 0.375
    assert got["mrr"] == pytest.approx(0.375)
    assert set(got) == {"ndcg@10", "hit@10", "ndcg@20", "hit@20", "mrr"}


def test_metrics_cutoffs_by_hand():
    got = metrics_from_ranks(torch.tensor([0, 1, 10, 25]), ks=(10, 20))
    # @10 counts ranks 0 and 1: NDCG = (1/log2(2) + 1/log2(3)) / 4, Hit = 2/4
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got["hit@10"] == pytest.approx(0.5)
    # @20 also counts rank 10: + 1/log2(12); Hit = 3/4
    assert got["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert got["hit@20"] == pytest.approx(0.75)
    # MRR has no cutoff: (1 + 1/2 + 1/11 + 1/26) / 4
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 26) / 4)


def test_ties_count_against_the_target():
    flat = torch.full((1, 6), 0.5)
    # all five items equal: the four others all count -> worst rank 4, never a lucky hit
    assert full_ranks(flat, torch.tensor([2])).tolist() == [4]
    assert metrics_from_ranks(full_ranks(flat, torch.tensor([2])), ks=(1,))["hit@1"] == 0.0
    one_tie = torch.tensor([[0.0, 0.5, 0.5, 0.1, 0.1, 0.1]])
    # items 1 and 2 tie at the top: each counts against the other -> rank 1 for both
    assert full_ranks(one_tie, torch.tensor([1])).tolist() == [1]
    assert full_ranks(one_tie, torch.tensor([2])).tolist() == [1]


def test_excluded_history():
    target = torch.tensor([3])  # user 0: 0.7, beaten by item 1 only
    # item 1 is in the history: it stops counting -> rank 0
    assert full_ranks(SCORES[:1], target, torch.tensor([[0, 1]])).tolist() == [0]
    # the target itself in the history stays a candidate
    assert full_ranks(SCORES[:1], target, torch.tensor([[3, 1]])).tolist() == [0]
    # padding 0 excludes nothing (and column 0, scored 9.0, never counts anyway)
    assert full_ranks(SCORES[:1], target, torch.tensor([[0, 0]])).tolist() == [1]
    # target 4 (0.1): items 1, 3 remain above once 2 and 5 are history -> rank 2
    assert full_ranks(SCORES[:1], torch.tensor([4]), torch.tensor([[2, 5]])).tolist() == [2]
    # per row: user 1 excludes item 2 (0.8) -> target 1 beaten by 3, 4 -> rank 2
    history = torch.tensor([[1, 0], [2, 0]])
    assert full_ranks(SCORES, torch.tensor([3, 1]), history).tolist() == [0, 2]


def test_sampled_ranks_by_hand():
    targets = torch.tensor([3, 1])
    # user 0, target 3 (0.7) vs items 1 (0.9), 4 (0.1): one higher -> rank 1
    # user 1, target 1 (0.2) vs items 4 (0.4), 5 (0.0): one higher -> rank 1
    assert sampled_ranks(SCORES, targets, torch.tensor([[1, 4], [4, 5]])).tolist() == [1, 1]
    # user 0 vs 4, 5 (0.1, 0.3): none higher -> 0; user 1 vs 2, 3 (0.8, 0.6): both -> 2
    negatives = torch.tensor([[4, 5], [2, 3]], dtype=torch.int32)  # int32 as read from Parquet
    assert sampled_ranks(SCORES, targets, negatives).tolist() == [0, 2]
    # all equal: both negatives count against the target
    flat = torch.full((1, 6), 1.0)
    assert sampled_ranks(flat, torch.tensor([3]), torch.tensor([[4, 5]])).tolist() == [2]


def test_sampled_ranks_refuse_bad_negatives():
    with pytest.raises(ValueError, match="target"):
        sampled_ranks(SCORES[:1], torch.tensor([3]), torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="item ids"):
        sampled_ranks(SCORES[:1], torch.tensor([3]), torch.tensor([[0, 4]]))


def test_summarize_runs_by_hand():
    runs = [
        {"ndcg@10": 0.1, "mrr": 0.5},
        {"ndcg@10": 0.3, "mrr": 0.5},
        {"ndcg@10": 0.2, "mrr": 0.5},
    ]
    got = summarize_runs(runs)
    # mean 0.2; deviations -0.1, 0.1, 0 -> variance (0.01 + 0.01 + 0) / (3 - 1) = 0.01 -> std 0.1
    assert got["ndcg@10"] == pytest.approx((0.2, 0.1))
    assert got["mrr"] == pytest.approx((0.5, 0.0))
    assert summarize_runs([{"mrr": 0.4}]) == {"mrr": (0.4, 0.0)}  # one seed: std 0.0


def test_nan_and_bad_targets_are_refused():
    nan = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        full_ranks(nan, torch.tensor([2]))
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranks(nan, torch.tensor([2]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="item ids"):
        full_ranks(SCORES[:1], torch.tensor([0]))  # padding is never a target
