"""The frozen teacher of reflow and one-step distillation: where it is, what it must share with the student, and
its ODE solutions X1 from given noises X0.

The teacher lives outside the student module (never in its state dict or checkpoint), frozen, in eval mode, on the
student's device and dtype, and runs under no-grad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from smolvla.errors import ConfigError
from smolvla.model.config import SmolVLAConfig
from smolvla.model.rectified_flow import euler_sample
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.train.build import policy_dir

# Fields where teacher and student must agree for X1 to be a target the student can regress.
MATCHED_FIELDS = ("chunk_size", "action_dim", "max_action_dim")


def teacher_dir(path: str | None) -> Path:
    """The teacher's pretrained_model directory, or a ConfigError saying what is missing."""
    if not path:
        raise ConfigError("reflow needs a teacher: set --policy.teacher_path=<the teacher's pretrained_model>")
    return policy_dir(path, flag="--policy.teacher_path")


def check_teacher(teacher: SmolVLAConfig, student: SmolVLAConfig, where: str) -> None:
    """The teacher's chunk and action widths must be the student's."""
    for name in MATCHED_FIELDS:
        have, want = getattr(teacher, name), getattr(student, name)
        if have != want:
            raise ConfigError(f"teacher {where} has {name}={have}, the student {name}={want}; they must match")


def load_teacher(path: str, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """(policy, preprocessor, postprocessor) of a teacher checkpoint: frozen, eval mode, on `device`/`dtype`."""
    directory = teacher_dir(path)
    teacher = SmolVLAPolicy.from_pretrained(directory).to(device=device, dtype=dtype)
    teacher.requires_grad_(False)
    teacher.eval()
    pre, post = load_processors(directory, device=str(device))
    return teacher, pre, post


@torch.no_grad()
def solve(teacher: SmolVLAPolicy, batch: dict[str, Any], noises: list[Tensor], num_steps: int) -> list[Tensor]:
    """The teacher's ODE solutions X1 (B, chunk, max_action_dim) from each noise X0, the prefix encoded once."""
    velocity = teacher.model.velocity_field(teacher.prepare_observation(batch))
    return [euler_sample(velocity, noise.to(teacher.device), num_steps) for noise in noises]
