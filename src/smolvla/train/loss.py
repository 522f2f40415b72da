"""The training objective around the policy's loss: reproducible noise per global batch, the held-out validation
loss, and the per-dataset / per-task loss sums the trainer logs.

LeRobot's loss is a mean over the valid action elements of a batch. With gradient accumulation or several processes
that mean must be over the *global* batch, so the policy returns per-sample (sum, count) and the caller divides
once by the global count.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from smolvla import streams
from smolvla.keys import TASK_KEY
from smolvla.train.precision import autocast


def batch_noise(policy, seed: int, index: int, global_batch: int, stream: int, world: int = 1, rank: int = 0):
    """Flow-matching noise and times of global batch `index` of `stream`, this process's slice, on the policy's
    device: a pure function of (seed, stream, index), whatever the process count."""
    generator = torch.Generator().manual_seed(streams.batch_seed(seed, index, stream))
    noise, time = policy.sample_noise_and_time(global_batch, generator)
    local = slice(rank * (global_batch // world), (rank + 1) * (global_batch // world))
    return noise[local].to(policy.device), time[local].to(policy.device)


@torch.no_grad()
def validation_loss(policy, pre, data, batch_size: int, max_batches: int, seed: int, use_amp: bool = False) -> float:
    """LeRobot's loss (mean over valid action elements) on a fixed sample of `data` with fixed noise.

    The sample and the noise depend only on `seed`, so the value compares across steps, stages and runs: the
    trainer's validation curve and continual learning's per-task forgetting check use it. Leaves `policy` in eval
    mode.
    """
    g = torch.Generator().manual_seed(streams.batch_seed(seed, 0, streams.VALIDATION))
    size = min(len(data), max_batches * batch_size)
    indices = torch.randperm(len(data), generator=g)[:size].tolist()
    loader = DataLoader(data, batch_size=batch_size, sampler=indices)
    policy.eval()
    total, count = 0.0, 0.0
    for k, raw in enumerate(loader):
        noise, t = batch_noise(policy, seed, k, len(raw[TASK_KEY]), streams.VALIDATION)
        with autocast(policy.device, use_amp):
            sums, counts = policy.compute_loss(pre(raw), noise=noise, time=t, reduction="sum_count")
        total += float(sums.float().sum())
        count += float(counts.sum())
    return total / count


class GroupLosses:
    """Per-sample loss sums and counts per dataset, then per task, kept on the device (no host sync per step)."""

    def __init__(self, datasets: int, tasks: list[str], device: torch.device):
        self.datasets, self.task_ids = datasets, {t: i for i, t in enumerate(tasks)}
        self.sums = torch.zeros(2, datasets + len(tasks), device=device, dtype=torch.float64)

    def add(self, per_sample: torch.Tensor, dataset_index: torch.Tensor, tasks: list[str]) -> None:
        task_index = torch.tensor([self.task_ids[t] for t in tasks], device=self.sums.device)
        where = torch.cat([dataset_index.to(self.sums.device), task_index + self.datasets])
        per = per_sample.detach().double().repeat(2)  # each sample counts for its dataset and its task
        self.sums[0].index_add_(0, where, per)
        self.sums[1].index_add_(0, where, torch.ones_like(per))
