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

from pathlib import Path

import torch

from smolvla.errors import ConfigError
from smolvla.model.checkpoint import CONFIG_NAME, PRETRAINED_MODEL
from smolvla.model.config import SmolVLAConfig
from smolvla.reflow.config import DistillConfig, ReflowConfig, ReflowTrainConfig
from smolvla.reflow.hooks import ReflowHooks
from smolvla.reflow.pairs import PairCache, generate_pairs
from smolvla.reflow.teacher import teacher_dir
from smolvla.train.checkpoint import LAST, checkpoints_dir, step_name
from smolvla.train.trainer import train


def _ensure_pairs(config: ReflowConfig, train_config: ReflowTrainConfig) -> None:
    policy = train_config.policy
    path = Path(policy.reflow_pairs)
    if path.is_dir():
        teacher = teacher_dir(policy.teacher_path)
        try:
            cache = PairCache.load(path)
            cache.check(teacher, train_config.dataset, train_config.seed, policy.reflow_num_inference_steps,
                        SmolVLAConfig.from_json(teacher / CONFIG_NAME))  # fmt: skip
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
    train_config = config.round_config(teacher, output_dir, one_step)
    final = checkpoints_dir(output_dir) / step_name(train_config.steps) / PRETRAINED_MODEL
    if final.is_dir():
        print(f"{output_dir} is finished, reusing {final}")
        return final
    if train_config.policy.reflow_pairs:
        _ensure_pairs(config, train_config)
    train_config.resume = (checkpoints_dir(output_dir) / LAST).exists()
    train_config.validate()
    result = train(train_config, ReflowHooks(train_config.policy))
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


def run_distill(config: DistillConfig) -> Path:
    """Distil the teacher into a one-step policy (saved with num_steps = 1)."""
    print(f"[distill] one-step student of {config.policy.teacher_path}")
    return run_round(config, config.policy.teacher_path, Path(config.output_dir), one_step=True)
