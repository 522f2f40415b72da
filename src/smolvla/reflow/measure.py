"""How straight a policy's flow is and what fewer denoising steps cost, measured on held-out frames.

For each policy and step count: mean squared error (normalized action space, real action dims, valid steps) of the
sampled chunk against the ground-truth chunk and against a reference policy's chunk (the 10-step teacher) from the
same noise; the straightness of its trajectories (`rectified_flow.straightness` over a `reference_steps` solve); and
the latency of one chunk at batch 1 (observation encoding included, as a robot pays it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from smolvla import streams
from smolvla.model.rectified_flow import euler_sample, straightness
from smolvla.timing import timed


def _solutions(policy, batch: dict[str, Any], noise: Tensor, step_counts: list[int]):
    """The chunk at every step count and the velocities of the largest one, the prefix encoded once."""
    velocity = policy.model.velocity_field(policy.prepare_observation(batch))
    noise = noise.to(policy.device)
    *fewer, most = sorted(set(step_counts))
    out = {n: euler_sample(velocity, noise, n) for n in fewer}
    out[most], velocities = euler_sample(velocity, noise, most, return_velocities=True)
    return {n: x.cpu() for n, x in out.items()}, velocities.cpu()


@torch.no_grad()
def action_errors(
    policies: dict[str, Any],
    pre,
    data,
    step_counts: list[int],
    reference: str,
    reference_steps: int = 10,
    batch_size: int = 32,
    max_batches: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{policy: {"mse_data": {n: ...}, "mse_reference": {n: ...}, "straightness": ...}} on a fixed sample of `data`.

    All policies share `pre` (reflow students use their teacher's processors) and see the same frames and noise.
    """
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(data), generator=g)[: max_batches * batch_size].tolist()
    loader = DataLoader(data, batch_size=batch_size, sampler=indices)
    counts = sorted(set(step_counts))
    sums = {name: {"data": dict.fromkeys(counts, 0.0), "ref": dict.fromkeys(counts, 0.0), "s": 0.0}
            for name in policies}  # fmt: skip
    elements, samples = 0.0, 0
    for k, raw in enumerate(loader):
        batch = pre(raw)
        any_policy = next(iter(policies.values()))
        cfg = any_policy.config
        actions, valid = any_policy.prepare_actions(batch)
        dim = cfg.action_dim
        valid = valid[..., 0].cpu()  # per step (reflow trains one embodiment: every action dim is real)
        generator = torch.Generator().manual_seed(streams.batch_seed(seed, k, streams.MEASURE))
        noise = torch.randn(actions.shape, generator=generator)
        solved = {
            name: _solutions(policy, batch, noise, [*counts, reference_steps]) for name, policy in policies.items()
        }
        ref_chunk = solved[reference][0][reference_steps]
        for name, (chunks, velocities) in solved.items():
            for n in counts:
                err = (chunks[n] - actions.cpu())[..., :dim].pow(2).sum(-1)
                sums[name]["data"][n] += float((err * valid).sum())
                sums[name]["ref"][n] += float((chunks[n] - ref_chunk)[..., :dim].pow(2).sum())
            sums[name]["s"] += float(straightness(velocities[..., :dim]).sum())
        elements += float(valid.sum()) * dim
        samples += actions.shape[0]
    full = samples * cfg.chunk_size * dim
    return {
        name: {
            "mse_data": {n: s["data"][n] / elements for n in counts},
            "mse_reference": {n: s["ref"][n] / full for n in counts},
            "straightness": s["s"] / samples,
        }
        for name, s in sums.items()
    }


@torch.no_grad()
def chunk_latency(policy, batch: dict[str, Any], step_counts: list[int], repeats: int = 20) -> dict[int, float]:
    """Median milliseconds of `predict_chunk` (encoding + n expert steps) on `batch`, per step count (3 warm-up
    calls first; the device is synchronized around every timed call)."""
    out = {}
    for n in step_counts:
        _, seconds = timed(lambda n=n: policy.predict_chunk(batch, num_steps=n), repeats, policy.device, warmup=2)
        out[n] = 1000 * seconds
    return out
