"""Reflow and one-step distillation as a training mode: the `TrainHooks` a reflow run gives the trainer.

Per batch the student trains on the pair (X0, X1): X0 the batch's noise, X1 the teacher's Euler solution from X0
under the same observation (its prefix encoded once, shared by all of its steps), or the pair a cache stored for the
frame. The flow-matching loss on that pair is the reflow loss: x_t on the straight line between them, target
X0 − X1. Distillation (`reflow_one_step`) trains only at t = 1, where the student's single Euler step X0 − v(X0, 1)
must land on X1.

Student and teacher read the same preprocessed batch, so the student trains with the teacher's processors
(normalization and tokenizer): X1 is in the teacher's normalized action space and must stay meaningful to the
student. A fresh student starts from its teacher unless `--policy.path` says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from smolvla.keys import ACTION_IS_PAD, ACTION_KEY
from smolvla.model.checkpoint import CONFIG_NAME
from smolvla.model.config import SmolVLAConfig
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.reflow.config import ReflowArgs, ReflowTrainConfig
from smolvla.reflow.pairs import PairCache
from smolvla.reflow.teacher import check_teacher, load_teacher, solve, teacher_dir
from smolvla.train.build import RunProcessors
from smolvla.train.config import PolicyArgs, TrainConfig
from smolvla.train.data import TrainData
from smolvla.train.hooks import TrainHooks
from smolvla.train.precision import autocast


class ReflowHooks(TrainHooks):
    def __init__(self, args: ReflowArgs):
        self.args = args
        self.directory = teacher_dir(args.teacher_path)  # a missing teacher is named as such, before anything else
        self.student: SmolVLAPolicy | None = None
        self._teacher: SmolVLAPolicy | None = None
        self.cache: PairCache | None = None

    def policy_args(self, args: PolicyArgs) -> PolicyArgs:
        return args if args.path is not None else dataclasses.replace(args, path=self.args.teacher_path)

    def init_policy(self, policy: SmolVLAPolicy, args: PolicyArgs, data: TrainData, device: str) -> RunProcessors:
        if self.args.reflow_one_step:
            policy.config.num_steps = 1  # what the distilled policy is for
        return RunProcessors.pair(*load_processors(self.directory, device=device))

    def attach(self, policy: SmolVLAPolicy, config: TrainConfig) -> None:
        self.student, self.seed, self.use_amp = policy, config.seed, config.policy.use_amp
        check_teacher(SmolVLAConfig.from_json(self.directory / CONFIG_NAME), policy.config, str(self.directory))
        if self.args.reflow_pairs:
            self.cache = PairCache.load(self.args.reflow_pairs)
            self.cache.check(
                self.directory, config.dataset, config.seed, self.args.reflow_num_inference_steps, policy.config
            )

    @property
    def teacher(self) -> SmolVLAPolicy:
        if self._teacher is None:  # lazily: a cached run never loads it
            dtype = next(self.student.parameters()).dtype
            self._teacher, _, _ = load_teacher(str(self.directory), self.student.device, dtype)
        return self._teacher

    def targets(
        self, raw: dict[str, Any], batch: dict[str, Any], noise: Tensor, time: Tensor, index: int
    ) -> tuple[dict[str, Any], Tensor, Tensor]:
        """(batch with `action` = X1 and no step padding, X0, time): X1 is defined on every step of the chunk."""
        if self.cache is not None:
            noise, actions = self.cache.lookup(raw["dataset_index"], raw["index"], self.seed, index)
        else:
            with autocast(self.student.device, self.use_amp):
                (actions,) = solve(self.teacher, batch, [noise], self.args.reflow_num_inference_steps)
        batch = {k: v for k, v in batch.items() if k != ACTION_IS_PAD}
        batch[ACTION_KEY] = actions.float().to(self.student.device)
        if self.args.reflow_one_step:
            time = torch.ones_like(time)
        return batch, noise.to(self.student.device), time


def hooks_for(config: TrainConfig) -> TrainHooks | None:
    """The training mode a `smolvla train` config asks for: reflow when `--policy.use_reflow=true`, else imitation."""
    if isinstance(config, ReflowTrainConfig) and config.policy.use_reflow:
        return ReflowHooks(config.policy)
    return None
