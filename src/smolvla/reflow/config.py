"""Reflow settings: the `--policy.*` reflow fields of `smolvla train`, and the `smolvla reflow` / `distill` runs.

The fields live in a subclass of the trainer's policy block, so the flags read as before
(`--policy.use_reflow=true --policy.teacher_path=...`) while the trainer's own config knows nothing of reflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvla.errors import ConfigError
from smolvla.flags import apply_mapping
from smolvla.train.config import PolicyArgs, TrainConfig, absolute

PAIRS_DIR = "pairs"


@dataclass
class ReflowArgs(PolicyArgs):
    """Reflow / one-step distillation: train on a frozen teacher's (noise, ODE solution) pairs."""

    use_reflow: bool = False
    teacher_path: str | None = None  # the teacher's pretrained_model directory (also the student's default init)
    reflow_num_inference_steps: int = 10  # Euler steps of the teacher's ODE solve
    reflow_pairs: str | None = None  # a pair cache from `smolvla reflow` (generated once); none = teacher online
    reflow_one_step: bool = False  # distillation: train only at t = 1 (one-step map noise → teacher's actions)

    FIELDS = ("use_reflow", "teacher_path", "reflow_num_inference_steps", "reflow_pairs", "reflow_one_step")

    def validate(self) -> None:
        if not self.use_reflow:
            given = [f for f in self.FIELDS[1:] if getattr(self, f) != getattr(ReflowArgs, f)]
            if given:
                raise ConfigError(f"--policy.{given[0]} is a reflow setting: add --policy.use_reflow=true")
            return
        if self.teacher_path is None:
            raise ConfigError("--policy.use_reflow=true needs --policy.teacher_path=<the teacher's pretrained_model>")
        if self.reflow_num_inference_steps < 1:
            raise ConfigError(
                f"--policy.reflow_num_inference_steps must be >= 1, got {self.reflow_num_inference_steps}"
            )


@dataclass
class ReflowTrainConfig(TrainConfig):
    """`smolvla train` with the reflow fields: plain imitation unless `--policy.use_reflow=true`."""

    policy: ReflowArgs = field(default_factory=ReflowArgs)

    def validate(self) -> None:
        self.policy.validate()
        if self.policy.use_reflow and self.peft.enabled:
            raise ConfigError(
                "--peft.* is not supported with reflow / one-step distillation: the student is trained in full from "
                "its teacher's weights"
            )
        if self.policy.use_reflow and self.policy.rtc_training_max_delay:
            raise ConfigError(
                "--policy.rtc_training_max_delay is not supported with reflow / one-step distillation: the student "
                "regresses its teacher's whole chunk"
            )
        if self.policy.use_reflow and self.rename_map:
            raise ConfigError(
                "--rename_map is not supported with reflow: the student reads its teacher's batches, named as the "
                "teacher was trained"
            )
        super().validate()

    def resolve_paths(self) -> None:
        super().resolve_paths()
        self.policy.teacher_path = absolute(self.policy.teacher_path)
        self.policy.reflow_pairs = absolute(self.policy.reflow_pairs)

    def to_dict(self) -> dict[str, Any]:
        """A plain run saves a plain `TrainConfig` (so `TrainConfig` resumes it); a reflow run its reflow fields."""
        out = super().to_dict()
        if not self.policy.use_reflow:
            for name in ReflowArgs.FIELDS:
                out["policy"].pop(name)
        return out


@dataclass
class ReflowConfig(ReflowTrainConfig):
    """`smolvla train` settings for each round, plus how the rounds run. The teacher is `--policy.teacher_path`."""

    output_dir: str = "outputs/reflow"
    rounds: int = 1  # reflow rounds; a 1-RF teacher gives 2-RF after one round, 3-RF after two
    pairs: str = "cached"  # cached: solve each round's teacher once into a pair cache | online: in every batch
    pairs_per_frame: int = 4  # noise draws per training frame in the cache
    pairs_batch_size: int = 64  # batch of the cache's teacher solves

    def validate(self) -> None:
        if self.pairs not in ("cached", "online"):
            raise ConfigError(f"--pairs must be cached or online, got {self.pairs!r}")
        if self.rounds < 1 or self.pairs_per_frame < 1 or self.pairs_batch_size < 1:
            raise ConfigError("--rounds, --pairs_per_frame and --pairs_batch_size must be >= 1")
        if self.policy.path is not None:
            raise ConfigError("a reflow student starts from its teacher: drop --policy.path (set the teacher instead)")
        self.policy.use_reflow = True
        super().validate()

    @classmethod
    def from_flags(cls, argv: list[str]) -> ReflowConfig:
        config = cls.layered(argv)
        if config.resume:
            raise ConfigError("reflow resumes by itself: rerun the same command without --resume")
        config.validate()
        return config

    def round_config(self, teacher: str, output_dir: Path, one_step: bool) -> ReflowTrainConfig:
        """The `smolvla train` settings of one round."""
        names = {f.name for f in dataclasses.fields(ReflowTrainConfig)}
        config = apply_mapping(ReflowTrainConfig(), {k: v for k, v in self.to_dict().items() if k in names})
        config.output_dir = str(output_dir)
        config.policy.use_reflow = True
        config.policy.teacher_path = teacher
        config.policy.reflow_one_step = one_step
        config.policy.reflow_pairs = str(output_dir / PAIRS_DIR) if self.pairs == "cached" else None
        return config


@dataclass
class DistillConfig(ReflowConfig):
    """`smolvla distill`: one round whose student is trained only at t = 1 (a one-step policy)."""

    output_dir: str = "outputs/distill"

    def validate(self) -> None:
        if self.rounds != 1:
            raise ConfigError("distill trains one student from one teacher: drop --rounds")
        super().validate()
