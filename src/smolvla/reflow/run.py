"""`smolvla reflow` (k rounds of reflow: 1-RF → 2-RF → 3-RF ...) and `smolvla distill` (one-step student).

Every round is an ordinary `smolvla train` run in reflow mode whose teacher is the previous round's final policy and
whose student starts from that teacher. With `--pairs=cached` (default) the round first solves its teacher once per
training frame into `<round>/pairs/`, so training itself needs no teacher passes.

    <output_dir>/round_1/{pairs/, checkpoints/, tensorboard/, metrics.jsonl}   reflow: 2-RF from a 1-RF teacher
    <output_dir>/round_2/...                                                 3-RF
    <output_dir>/{pairs/, checkpoints/, ...}                                   distill: the one-step student

Rerunning the same command skips finished rounds, reuses a valid pair cache and resumes an interrupted training run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from smolvla.configs import apply_mapping
from smolvla.errors import ConfigError
from smolvla.train.config import TrainConfig

PAIRS_DIR = "pairs"


@dataclass
class ReflowConfig(TrainConfig):
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

    def round_config(self, teacher: str, output_dir: Path, one_step: bool) -> TrainConfig:
        """The `smolvla train` settings of one round."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        config = apply_mapping(TrainConfig(), {k: v for k, v in self.to_dict().items() if k in names})
        config.output_dir = str(output_dir)
        config.policy.use_reflow = True
        config.policy.teacher_path = teacher
        config.policy.reflow_one_step = one_step
        config.policy.reflow_pairs = str(output_dir / PAIRS_DIR) if self.pairs == "cached" else None
        return config


def _ensure_pairs(config: ReflowConfig, train_config: TrainConfig) -> None:
    import torch

    from smolvla.model.config import SmolVLAConfig
    from smolvla.reflow.pairs import PairCache, generate_pairs
    from smolvla.reflow.teacher import teacher_dir

    policy = train_config.policy
    path = Path(policy.reflow_pairs)
    if path.is_dir():
        teacher = teacher_dir(policy.teacher_path)
        try:
            cache = PairCache.load(path)
            cache.check(teacher, train_config.dataset, train_config.seed, policy.reflow_num_inference_steps,
                        SmolVLAConfig.from_json(teacher / "config.json"))  # fmt: skip
            if cache.pairs_per_frame == config.pairs_per_frame:
                print(f"reusing the pair cache {path} ({cache.meta['frames']} frames)")
                return
        except ConfigError as e:
            print(f"regenerating the pair cache {path}: {e}")
    print(f"solving teacher {policy.teacher_path} for {config.pairs_per_frame} pairs per frame → {path}")
    cache = generate_pairs(
        policy.teacher_path, train_config.dataset, path, seed=train_config.seed,
        num_steps=policy.reflow_num_inference_steps, pairs_per_frame=config.pairs_per_frame,
        batch_size=config.pairs_batch_size, num_workers=train_config.num_workers,
        device=policy.device or ("cuda" if torch.cuda.is_available() else "cpu"), use_amp=policy.use_amp,
    )  # fmt: skip
    print(f"  {cache.meta['frames']} frames in {cache.meta['seconds']:.0f} s")


def run_round(config: ReflowConfig, teacher: str, output_dir: Path, one_step: bool) -> Path:
    """Train one reflow (or distillation) round; returns its final pretrained_model directory."""
    from smolvla.train.checkpoint import LAST, PRETRAINED_MODEL, checkpoints_dir, step_name
    from smolvla.train.trainer import train

    train_config = config.round_config(teacher, output_dir, one_step)
    final = checkpoints_dir(output_dir) / step_name(train_config.steps) / PRETRAINED_MODEL
    if final.is_dir():
        print(f"{output_dir} is finished, reusing {final}")
        return final
    if train_config.policy.reflow_pairs:
        _ensure_pairs(config, train_config)
    train_config.resume = (checkpoints_dir(output_dir) / LAST).exists()
    train_config.validate()
    result = train(train_config)
    print(f"trained {result.step} steps in {result.seconds:.0f} s → {result.checkpoint}")
    return result.checkpoint / PRETRAINED_MODEL


def run_reflow(config: ReflowConfig) -> list[Path]:
    """k rounds of reflow; returns each round's final policy (the last is the (k+1)-RF model of a 1-RF teacher)."""
    teacher = config.policy.teacher_path
    finals = []
    for r in range(1, config.rounds + 1):
        print(f"[reflow round {r}/{config.rounds}] teacher {teacher}")
        teacher = str(run_round(config, teacher, Path(config.output_dir) / f"round_{r}", one_step=False))
        finals.append(Path(teacher))
    return finals


@dataclass
class DistillConfig(ReflowConfig):
    """`smolvla distill`: one round whose student is trained only at t = 1 (a one-step policy)."""

    output_dir: str = "outputs/distill"

    def validate(self) -> None:
        if self.rounds != 1:
            raise ConfigError("distill trains one student from one teacher: drop --rounds")
        super().validate()


def run_distill(config: DistillConfig) -> Path:
    """Distil the teacher into a one-step policy (saved with num_steps = 1)."""
    print(f"[distill] one-step student of {config.policy.teacher_path}")
    return run_round(config, config.policy.teacher_path, Path(config.output_dir), one_step=True)
