"""Mixing several datasets in fixed proportions, exactly and reproducibly.

Replay (continual learning) and multi-dataset training need "60 % current task, 40 % earlier tasks". Drawing a
dataset at random per sample only gets that on average; here each epoch's sample count per dataset is fixed up front
(largest-remainder rounding of `num_samples × weight`), each dataset contributes distinct frames until it is
exhausted (then a fresh permutation), and the merged order is shuffled, all from `(seed, epoch)`: epoch k's order is
`epoch_indices(k)`, so a resumed run (`smolvla.train.data.GlobalBatches`) recomputes where it stood instead of
saving iterator state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from smolvla.errors import ConfigError


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Integer counts summing to `total`, each within 1 of `total * w / sum(w)` (largest remainder)."""
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    quotas = [total * w / sum(weights) for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


class WeightedDatasetSampler(Sampler[int]):
    """Indices into concatenated datasets (dataset i occupies `[offset_i, offset_i + size_i)`) in given proportions."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ):
        if any(s <= 0 for s in sizes):
            raise ConfigError(f"every dataset must have frames, got sizes {list(sizes)}")
        weights = [1.0] * len(sizes) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sizes):
            raise ConfigError(f"{len(weights)} weights for {len(sizes)} datasets")
        self.sizes = [int(s) for s in sizes]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.num_samples = sum(self.sizes) if num_samples is None else int(num_samples)
        self.counts = apportion(self.num_samples, weights)
        self.seed = int(seed)
        self.epoch = 0  # the epoch the next iteration yields

    def __len__(self) -> int:
        return self.num_samples

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """The full index order of one epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        parts = []
        for size, offset, count in zip(self.sizes, self.offsets, self.counts, strict=True):
            rounds = [torch.randperm(size, generator=g) for _ in range(math.ceil(count / size))]
            parts.append(torch.cat(rounds)[:count] + offset if rounds else torch.empty(0, dtype=torch.long))
        merged = torch.cat(parts)
        return merged[torch.randperm(len(merged), generator=g)]

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        yield from self.epoch_indices(epoch).tolist()
