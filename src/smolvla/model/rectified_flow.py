"""Rectified-flow arithmetic shared by the SmolVLA head, reflow/distillation training and their measurements.

Time runs as in LeRobot/openpi: t = 1 is noise X0, t = 0 is the action chunk X1, the point on the straight line is
x_t = t·X0 + (1 − t)·X1 and its velocity (what the network regresses) is u = X0 − X1; sampling integrates
dx = v dt from t = 1 down to t = 0. Rectified Flow (Liu et al., arXiv 2209.03003) writes the same line with time
reversed (X_t = (1 − t)·X0 + t·X1, target X1 − X0): the two differ by the sign of t and of v, nothing else.

Reflow trains on pairs (X0, X1) where X1 is a teacher's ODE solution from X0 instead of an independent data sample:
the student then learns a flow whose trajectories are straighter, so fewer Euler steps reach the same actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]  # v(x_t (B, H, ...), t (B,) or per chunk step (B, H)) -> (B, H, ...)


def interpolate(noise: Tensor, actions: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """The straight-line point x_t between `noise` (t = 1) and `actions` (t = 0), and its velocity noise − actions.
    `time` is one per sample (B,), or one per leading position (B, H) (training-time RTC's clean prefix: t = 0)."""
    t = time.reshape(*time.shape, *([1] * (noise.ndim - time.ndim)))
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


@dataclass
class Inpainting:
    """Real-time chunking's target (Black et al., arXiv 2506.07339): the next chunk should agree with the actions the
    robot will still execute from the current one.

    `target` (B, H, D) holds those actions in model space, zero-padded; `weights` (B, H, D) is the soft mask —
    1 on the `frozen` steps that execute while the policy thinks, decaying over the rest of the overlap, 0 after it
    and on padded action dims (a row of zeros is ordinary sampling). `max_guidance` is the paper's β.
    """

    target: Tensor
    weights: Tensor
    max_guidance: float = 5.0

    @classmethod
    def from_queued(
        cls, queued: Sequence[Tensor], frozen: Sequence[int], horizon: int, width: int, max_guidance: float = 5.0
    ) -> Inpainting:
        """From each batch element's (L_i, d) queued actions (model space, L_i <= horizon; L_i = 0 samples freely)
        and its count of frozen steps."""
        target = queued[0].new_zeros(len(queued), horizon, width, dtype=torch.float32)
        weights = torch.zeros_like(target)
        for i, (actions, d) in enumerate(zip(queued, frozen, strict=True)):
            length, dims = actions.shape
            target[i, :length, :dims] = actions
            weights[i, :, :dims] = soft_mask(horizon, length, int(d)).unsqueeze(-1)
        return cls(target, weights, max_guidance)


def soft_mask(horizon: int, overlap: int, frozen: int) -> Tensor:
    """RTC's weights of the queued actions over a chunk of `horizon` steps (the paper's eq. 5 with H − s = `overlap`):
    1 for i < frozen, c·(e^c − 1)/(e − 1) with c = (overlap − i)/(overlap − frozen + 1) up to the overlap, then 0."""
    if not 0 <= frozen <= overlap <= horizon:
        raise ValueError(f"need 0 <= frozen ({frozen}) <= overlap ({overlap}) <= horizon ({horizon})")
    i = torch.arange(horizon, dtype=torch.float32)
    c = (overlap - i) / (overlap - frozen + 1)
    decay = c * torch.expm1(c) / math.expm1(1.0)
    return torch.where(i < frozen, torch.ones_like(i), torch.where(i < overlap, decay, torch.zeros_like(i)))


def guided_euler_sample(velocity: Velocity, noise: Tensor, num_steps: int, inpainting: Inpainting) -> Tensor:
    """`euler_sample` with RTC's ΠGDM guidance: at each step the predicted final actions x̂ = x_t − t·v are pulled
    towards the target through the vector–Jacobian product (target − x̂)ᵀ W ∂x̂/∂x_t, weighted by
    min(β, ((1 − t)² + t²) / (t (1 − t))) (the paper's (1 − τ)/(τ r²) with τ = 1 − t). In our time direction the
    velocity points towards noise, so the guidance is subtracted. One extra backward through the expert per step.
    Must run with autograd available (`torch.no_grad()` is fine, `torch.inference_mode()` is not)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("guided sampling needs autograd: call it under torch.no_grad(), not inference_mode")
    dt = -1.0 / num_steps
    x_t = noise.float()
    target, weights = (w.to(device=x_t.device, dtype=torch.float32) for w in (inpainting.target, inpainting.weights))
    for k in range(num_steps):
        t = 1.0 + k * dt
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            v_t = velocity(x, x.new_full((x.shape[0],), t))
            predicted = x - t * v_t
            (pull,) = torch.autograd.grad(predicted, x, grad_outputs=weights * (target - predicted))
        scale = inpainting.max_guidance
        if 0.0 < t < 1.0:
            scale = min(scale, ((1 - t) ** 2 + t**2) / (t * (1 - t)))
        x_t = x_t + dt * (v_t.detach() - scale * pull)
    return x_t


@dataclass
class ActionPrefix:
    """Training-time real-time chunking's input (Black et al., arXiv 2512.05964): the first steps of the chunk are
    given — the actions that execute while the policy thinks — and enter the expert as clean action tokens (flow time
    0), so the model continues them; it was trained that way (`SmolVLAConfig.rtc_training_max_delay`). Unlike
    `Inpainting` this costs what a plain chunk costs: no backward pass.

    `actions` (B, H, D) model space, zero-padded; `mask` (B, H) True on each sample's given steps (a leading run).
    """

    actions: Tensor
    mask: Tensor

    @classmethod
    def from_queued(cls, queued: Sequence[Tensor], frozen: Sequence[int], horizon: int, width: int) -> ActionPrefix:
        """From each batch element's (L_i, d) queued actions (model space) and how many of them are frozen (given);
        0 frozen samples freely."""
        actions = torch.zeros(len(queued), horizon, width, dtype=torch.float32)
        mask = torch.zeros(len(queued), horizon, dtype=torch.bool)
        for i, (given, d) in enumerate(zip(queued, frozen, strict=True)):
            if not 0 <= d <= min(len(given), horizon):
                raise ValueError(f"frozen steps {d} must be in 0..{min(len(given), horizon)}")
            actions[i, :d, : given.shape[1]] = given[:d]
            mask[i, :d] = True
        return cls(actions, mask)


def prefix_time(time: Tensor, mask: Tensor) -> Tensor:
    """Per-step flow time (B, H): `time` (B,) everywhere except 0 (clean) on the given steps."""
    return torch.where(mask, 0.0, time[:, None])


def conditioned_euler_sample(velocity: Velocity, noise: Tensor, num_steps: int, prefix: ActionPrefix) -> Tensor:
    """`euler_sample` with the given steps held at their actions and flow time 0 throughout (their velocity is
    zeroed): the returned chunk repeats them exactly and the model fills in the rest as it learnt to
    (training-time RTC)."""
    mask = prefix.mask.to(noise.device)
    keep = mask[..., None]
    start = torch.where(keep, prefix.actions.to(device=noise.device, dtype=torch.float32), noise.float())
    return euler_sample(lambda x_t, t: torch.where(keep, 0.0, velocity(x_t, prefix_time(t, mask))), start, num_steps)
