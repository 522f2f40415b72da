"""Rectified-flow arithmetic shared by the SmolVLA head, reflow/distillation training and their measurements.

Time runs as in LeRobot/openpi: t = 1 is noise X0, t = 0 is the action chunk X1, the point on the straight line is
x_t = t·X0 + (1 − t)·X1 and its velocity (what the network regresses) is u = X0 − X1; sampling integrates
dx = v dt from t = 1 down to t = 0. Rectified Flow (Liu et al., arXiv 2209.03003) writes the same line with time
reversed (X_t = (1 − t)·X0 + t·X1, target X1 − X0): the two differ by the sign of t and of v, nothing else.

Reflow trains on pairs (X0, X1) where X1 is a teacher's ODE solution from X0 instead of an independent data sample:
the student then learns a flow whose trajectories are straighter, so fewer Euler steps reach the same actions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]  # v(x_t (B, ...), t (B,)) -> (B, ...)


def interpolate(noise: Tensor, actions: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """The straight-line point x_t between `noise` (t = 1) and `actions` (t = 0), and its velocity noise − actions."""
    t = time.reshape(-1, *([1] * (noise.ndim - 1)))
    return t * noise + (1 - t) * actions, noise - actions


def euler_sample(velocity: Velocity, noise: Tensor, num_steps: int, return_velocities: bool = False):
    """Euler-integrate v from t = 1 to t = 0 in `num_steps` equal steps.

    Step k evaluates t_k = 1 − k / num_steps (not a float32 running sum), as LeRobot 0.6.1 does, so the same noise
    gives the same actions. With `return_velocities` also returns the (num_steps, B, ...) velocities used.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    dt = -1.0 / num_steps
    x_t = noise.float()
    velocities = []
    for k in range(num_steps):
        time = x_t.new_full((x_t.shape[0],), 1.0 + k * dt)
        v_t = velocity(x_t, time)
        x_t = x_t + dt * v_t
        velocities.append(v_t)
    if return_velocities:
        return x_t, torch.stack(velocities)
    return x_t


def straightness(velocities: Tensor) -> Tensor:
    """Per-sample straightness of an Euler trajectory: mean over steps and elements of ‖v_k − (X0 − X1)‖².

    With Euler steps the displacement X0 − X1 is the mean velocity, so this is the velocity's variance along the
    path: 0 for a straight trajectory (one step is then exact), larger the more the path bends (the paper's S(Z)).
    `velocities` is (steps, B, ...); returns (B,).
    """
    displacement = velocities.mean(dim=0, keepdim=True)
    return (velocities - displacement).pow(2).flatten(2).mean(dim=(0, 2))
