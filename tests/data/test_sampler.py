"""Weighted multi-dataset sampling: exact proportions, reproducibility, resume."""

import pytest

from smolvla import ConfigError
from smolvla.data import WeightedDatasetSampler, apportion


def test_apportion_is_exact_and_close_to_quota():
    for total, weights in [(10, [0.6, 0.4]), (7, [1, 1, 1]), (1000, [0.1, 0.2, 0.7]), (5, [0.0, 1.0])]:
        counts = apportion(total, weights)
        assert sum(counts) == total
        quotas = [total * w / sum(weights) for w in weights]
        assert all(abs(c - q) < 1 for c, q in zip(counts, quotas, strict=True))
    with pytest.raises(ConfigError):
        apportion(10, [0.5, -0.1])
    with pytest.raises(ConfigError):
        apportion(10, [0.0, 0.0])


def test_proportions_are_exact_per_epoch():
    sizes = [50, 200, 30]
    sampler = WeightedDatasetSampler(sizes, weights=[0.2, 0.5, 0.3], num_samples=1000, seed=3)
    for _ in range(3):  # every epoch, not on average
        drawn = list(sampler)
        per_dataset = [sum(lo <= i < lo + n for i in drawn) for lo, n in zip(sampler.offsets, sizes, strict=True)]
        assert per_dataset == [200, 500, 300]


def test_frames_are_distinct_until_a_dataset_is_exhausted():
    sampler = WeightedDatasetSampler([100, 10], weights=[0.5, 0.5], num_samples=40, seed=0)
    drawn = list(sampler)
    big = [i for i in drawn if i < 100]
    small = [i - 100 for i in drawn if i >= 100]
    assert len(set(big)) == 20  # no repeats from the large dataset
    assert sorted(small) == sorted(list(range(10)) * 2)  # the small one is cycled through whole permutations


def test_deterministic_per_epoch():
    make = lambda: WeightedDatasetSampler([30, 70], weights=[0.7, 0.3], seed=11)  # noqa: E731
    a, b = make(), make()
    first, second = list(a), list(a)
    assert first == list(b) and first != second  # same seed same order; the next epoch reshuffles
    assert make().epoch_indices(1).tolist() == second  # any epoch's order is recomputed, never stored
    assert list(WeightedDatasetSampler([30, 70], weights=[0.7, 0.3], seed=12)) != first
