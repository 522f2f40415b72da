"""SmolVLA's optimizer and learning-rate schedule, from the policy config's LeRobot fields.

AdamW (lr 1e-4, betas 0.9/0.95, eps 1e-8, weight decay 1e-10) over the trainable parameters only, and LeRobot's
"cosine decay with warm-up": a linear ramp from peak/(warm-up + 1) to the peak over the warm-up steps, then a cosine
from the peak to `decay_lr` measured from step 0 (so the cosine is already slightly below 1 when the warm-up ends)
and flat after `decay_steps`. A run shorter than `decay_steps` shrinks warm-up and decay by the same factor, as
LeRobot does, so a 1 000-step fine-tune still warms up and still decays to `decay_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from smolvla.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    peak_lr: float
    decay_lr: float
    warmup_steps: int
    decay_steps: int

    @classmethod
    def for_run(cls, config, total_steps: int) -> Schedule:
        """The policy config's schedule, scaled down when `total_steps` < `scheduler_decay_steps`."""
        warmup, decay = config.scheduler_warmup_steps, config.scheduler_decay_steps
        if total_steps < 1 or decay < 1 or warmup < 0:
            raise ConfigError(
                f"need total_steps >= 1, decay_steps >= 1, warmup_steps >= 0; got {total_steps}, {decay}, {warmup}"
            )
        if total_steps < decay:
            warmup, decay = int(warmup * total_steps / decay), total_steps
        return cls(config.optimizer_lr, config.scheduler_decay_lr, warmup, decay)


def lr_factor(step: int, schedule: Schedule) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    warmup, decay = schedule.warmup_steps, schedule.decay_steps
    if step < warmup:
        start = 1.0 / (warmup + 1)
        return start + (1.0 - start) * step / warmup
    alpha = schedule.decay_lr / schedule.peak_lr
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, decay) / decay))
    return alpha + (1.0 - alpha) * cosine


def make_optimizer(policy: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, with the policy config's hyper-parameters (move the policy to
    its device first: the fused kernel is chosen by where the parameters live)."""
    cfg = policy.config
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the policy has no trainable parameters (check the freezing flags)")
    # The fused kernel is ~7x faster than the default multi-tensor one on CPU (one pass over each tensor).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(
        params, lr=cfg.optimizer_lr, betas=tuple(cfg.optimizer_betas), eps=cfg.optimizer_eps,
        weight_decay=cfg.optimizer_weight_decay, fused=fused,
    )  # fmt: skip


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, schedule))
