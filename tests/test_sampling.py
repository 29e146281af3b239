import numpy as np

from slim_core.sampling import stratified_users


def test_sample_is_deterministic_sized_and_stratified():
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, 6, 800), rng.integers(40, 60, 200)])  # 20% long
    picked = stratified_users(lengths, 100, seed=1)
    assert len(picked) == len(set(picked)) == 100
    assert np.array_equal(picked, stratified_users(lengths, 100, seed=1))
    assert not np.array_equal(picked, stratified_users(lengths, 100, seed=2))
    assert (lengths[picked] >= 40).sum() == 20  # the long fifth keeps its share exactly


def test_asking_for_everyone_returns_everyone():
    assert stratified_users([5, 3, 9], 10).tolist() == [0, 1, 2]
