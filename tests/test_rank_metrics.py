"""Ranking metrics against hand-computed cases, including ties and the excluded-history rule."""

import math

import pytest
import torch

from slim_core.rec.metrics import full_ranks, metrics_from_ranks, sampled_ranks, summarize_runs

NEG = float("-inf")
# Column 0 is padding. Items 1..5 score 0.9, 0.5, 0.7, 0.1, 0.3.
SCORES = torch.tensor([[5.0, 0.9, 0.5, 0.7, 0.1, 0.3]])


def test_rank_counts_better_items_only():
    assert full_ranks(SCORES, torch.tensor([3])).tolist() == [1]  # only item 1 (0.9) beats 0.7
    assert full_ranks(SCORES, torch.tensor([1])).tolist() == [0]
    assert full_ranks(SCORES, torch.tensor([4])).tolist() == [4]  # the worst of five
    # column 0 scores 5.0 here and still never counts


def test_ties_count_against_the_target():
    flat = torch.full((1, 6), 0.5)
    assert full_ranks(flat, torch.tensor([2])).tolist() == [
        4
    ]  # all equal: worst rank, no lucky hit
    one_tie = torch.tensor([[0.0, 0.5, 0.5, 0.1, 0.1, 0.1]])
    assert full_ranks(one_tie, torch.tensor([1])).tolist() == [1]
    assert full_ranks(one_tie, torch.tensor([2])).tolist() == [1]


def test_excluded_history():
    target = torch.tensor([3])
    assert full_ranks(SCORES, target, torch.tensor([[0, 1]])).tolist() == [0]  # item 1 is history
    assert full_ranks(SCORES, target, torch.tensor([[3, 1]])).tolist() == [
        0
    ]  # target stays a candidate
    assert full_ranks(SCORES, target, torch.tensor([[0, 0]])).tolist() == [
        1
    ]  # padding excludes nothing
    assert full_ranks(SCORES, torch.tensor([4]), torch.tensor([[2, 5]])).tolist() == [
        2
    ]  # 1 and 3 remain above


def test_sampled_ranks():
    assert sampled_ranks(SCORES, torch.tensor([3]), torch.tensor([[1, 4]])).tolist() == [1]
    assert sampled_ranks(SCORES, torch.tensor([3]), torch.tensor([[4, 5]])).tolist() == [0]
    assert sampled_ranks(
        torch.full((1, 6), 1.0), torch.tensor([3]), torch.tensor([[4, 5]])
    ).tolist() == [2]


def test_metrics_by_hand():
    got = metrics_from_ranks(torch.tensor([0, 1, 10, 25]), ks=(10, 20))
    # NDCG@10: ranks 0 and 1 count: (1/log2(2) + 1/log2(3)) / 4
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert got["hit@10"] == pytest.approx(2 / 4)
    # @20 also counts rank 10: 1/log2(12)
    assert got["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert got["hit@20"] == pytest.approx(3 / 4)
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 26) / 4)


def test_summarize_runs_mean_and_sample_std():
    got = summarize_runs([{"ndcg@10": 0.1}, {"ndcg@10": 0.3}])
    assert got["ndcg@10"][0] == pytest.approx(0.2)
    assert got["ndcg@10"][1] == pytest.approx(math.sqrt(0.01 + 0.01))  # ddof = 1
    assert summarize_runs([{"mrr": 0.4}])["mrr"] == (0.4, 0.0)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        full_ranks(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([2]))
