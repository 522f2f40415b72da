"""Where a training mode changes plain imitation, and nothing else: the trainer calls these hooks and knows no mode.

`TrainHooks` itself is plain flow-matching imitation. A mode (reflow and one-step distillation, `smolvla.reflow`)
subclasses it and overrides what it changes: where the student comes from, which processors it trains with, and
what each batch's targets are.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from smolvla.policy import SmolVLAPolicy
from smolvla.train.build import RunProcessors, build_processors, make_tokenizer
from smolvla.train.config import PolicyArgs, TrainConfig
from smolvla.train.data import TrainData


class TrainHooks:
    def policy_args(self, args: PolicyArgs) -> PolicyArgs:
        """Where a fresh run's policy comes from (its preset or `--policy.path` checkpoint)."""
        return args

    def init_policy(self, policy: SmolVLAPolicy, args: PolicyArgs, data: TrainData, device: str) -> RunProcessors:
        """A fresh run's policy was just built: adjust it if the mode needs to, and return its processors
        (normalization from the dataset, the checkpoint's or a learnt tokenizer; one pair per robot)."""
        return build_processors(policy, make_tokenizer(args, data.tasks), data, device)

    def attach(self, policy: SmolVLAPolicy, config: TrainConfig) -> None:
        """The policy is on its device (fresh or resumed): set up whatever the targets need."""

    def targets(
        self, raw: dict[str, Any], batch: dict[str, Any], noise: Tensor, time: Tensor, index: int
    ) -> tuple[dict[str, Any], Tensor, Tensor]:
        """(batch, noise, time) the loss of global micro-batch `index` is computed on: the data's own here."""
        return batch, noise, time
