"""The frozen teacher of reflow and one-step distillation, and the straight-line targets it gives the trainer.

Per batch the student trains on the pair (X0, X1): X0 the batch's noise, X1 the teacher's Euler solution from X0
under the same observation (its prefix encoded once, shared by all of its steps). The flow-matching loss on that
pair is the reflow loss: x_t on the straight line between them, target X0 − X1. Distillation (`one_step`) trains
only at t = 1, where the student's single Euler step X0 − v(X0, 1) must land on X1.

The teacher lives outside the student module (never in its state dict or checkpoint), is loaded on first use,
frozen, in eval mode, on the student's device and dtype, and runs under no-grad. Student and teacher read the same
preprocessed batch, so the student trains with the teacher's processors (normalization and tokenizer): X1 is in the
teacher's normalized action space and must stay meaningful to the student.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from smolvla.errors import ConfigError
from smolvla.model.config import SmolVLAConfig
from smolvla.model.rectified_flow import euler_sample

if TYPE_CHECKING:
    from smolvla.policy import SmolVLAPolicy
    from smolvla.train.config import DatasetArgs, PolicyArgs

# Fields where teacher and student must agree for X1 to be a target the student can regress.
MATCHED_FIELDS = ("chunk_size", "action_dim", "max_action_dim")


def teacher_dir(path: str | None) -> Path:
    """The teacher's pretrained_model directory, or a ConfigError saying what is missing."""
    from smolvla.model.checkpoint import CONFIG_NAME
    from smolvla.train.build import pretrained_dir

    if not path:
        raise ConfigError("reflow needs a teacher: set --policy.teacher_path=<the teacher's pretrained_model>")
    directory = pretrained_dir(path)
    if not (directory / CONFIG_NAME).is_file():
        raise ConfigError(f"teacher {path} is not a pretrained_model directory: no {CONFIG_NAME}")
    return directory


def check_teacher(teacher: SmolVLAConfig, student: SmolVLAConfig, where: str) -> None:
    """The teacher's chunk and action widths must be the student's."""
    for name in MATCHED_FIELDS:
        have, want = getattr(teacher, name), getattr(student, name)
        if have != want:
            raise ConfigError(f"teacher {where} has {name}={have}, the student {name}={want}; they must match")


def weights_digest(directory: Path) -> str:
    """sha256 of the teacher's model.safetensors: identifies the teacher a pair cache was solved with."""
    from smolvla.model.checkpoint import WEIGHTS_NAME

    digest = hashlib.sha256()
    with open(directory / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(path: str, device: torch.device | str, dtype: torch.dtype = torch.float32):
    """(policy, preprocessor, postprocessor) of a teacher checkpoint: frozen, eval mode, on `device`/`dtype`."""
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processors import load_processors

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


class ReflowTargets:
    """The trainer's hook in reflow mode: replaces a batch's actions (and noise) with a teacher pair."""

    def __init__(self, args: PolicyArgs, dataset: DatasetArgs, student: SmolVLAPolicy, seed: int, use_amp: bool):
        self.args, self.student, self.seed, self.use_amp = args, student, seed, use_amp
        self.directory = teacher_dir(args.teacher_path)
        check_teacher(SmolVLAConfig.from_json(self.directory / "config.json"), student.config, str(self.directory))
        self._teacher: SmolVLAPolicy | None = None
        self.cache = None
        if args.reflow_pairs:
            from smolvla.reflow.pairs import PairCache

            self.cache = PairCache.load(args.reflow_pairs)
            self.cache.check(self.directory, dataset, seed, args.reflow_num_inference_steps, student.config)

    @property
    def teacher(self) -> SmolVLAPolicy:
        if self._teacher is None:  # lazily: a cached run never loads it
            dtype = next(self.student.parameters()).dtype
            self._teacher, _, _ = load_teacher(str(self.directory), self.student.device, dtype)
        return self._teacher

    def __call__(
        self, raw: dict[str, Any], batch: dict[str, Any], noise: Tensor, time: Tensor, index: int
    ) -> tuple[dict[str, Any], Tensor, Tensor]:
        """(batch with `action` = X1 and no step padding, X0, time): X1 is defined on every step of the chunk."""
        if self.cache is not None:
            noise, actions = self.cache.lookup(raw["dataset_index"], raw["index"], self.seed, index)
        else:
            from smolvla.train.trainer import autocast

            with autocast(self.student.device, self.use_amp):
                (actions,) = solve(self.teacher, batch, [noise], self.args.reflow_num_inference_steps)
        batch = {k: v for k, v in batch.items() if k != "action_is_pad"}
        batch["action"] = actions.float().to(self.student.device)
        if self.args.reflow_one_step:
            time = torch.ones_like(time)
        return batch, noise.to(self.student.device), time
