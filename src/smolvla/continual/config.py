"""`smolvla continual` settings: tasks learnt one after another, each stage with its replay mixture, lr and freezing.

The tasks and stages are lists, so they come from the YAML file given by `--config_path`; flags override the rest:

    output_dir: outputs/continual      # each method writes to <output_dir>/<method>/
    method: replay                     # replay | sequential (no replay: the forgetting baseline) | multitask
    base_lr: 1.0e-3                    # stage lr = base_lr × the stage's lr_factor
    train: {batch_size: 32, policy: {preset: tiny, image_size: 64}, dataset: {cache_frames: true}}
    replay: {strategy: full}           # or {strategy: budget, budget: 0.05}: 5 % of each earlier task's episodes
    tasks:
      - {id: task1, root: data/drawer-close, sim_task: drawer-close}
      - {id: task2, root: data/door-open, sim_task: door-open}
    stages:
      - {task: task1, steps: 500}
      - {task: task2, steps: 500, lr_factor: 0.7, replay: {task1: 0.2}}   # task2 gets the remaining 0.8

A stage's `replay` weights are by task id, as in `stage3_replay: {task1: 0.1, task2: 0.2, task3: 0.7}`: when the
stage's own task is listed, all weights are normalized by their sum; when it is not, it gets `1 − sum` of the others.
Only tasks learnt in an earlier stage can be replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from smolvla.errors import ConfigError
from smolvla.flags import FILE_ONLY, apply_flags, apply_mapping, load_config_file, to_mapping
from smolvla.train.config import TrainConfig

METHODS = ("replay", "sequential", "multitask")
STRATEGIES = ("full", "budget")
STATS = ("all", "first")


@dataclass
class TaskSpec:
    id: str = ""
    root: str = ""  # local LeRobot dataset of this task's demonstrations (its instruction is the dataset's task text)
    sim_task: str | None = None  # Meta-World task name: closed-loop success on it after every stage


@dataclass
class StageSpec:
    task: str = ""  # id of the task learnt in this stage
    steps: int = 1000
    lr_factor: float = 1.0  # the seeds' per-stage decay: 1.0, 0.7, 0.5, 0.4
    replay: dict[str, float] = field(default_factory=dict, metadata=FILE_ONLY)  # task id → mixture weight
    freeze_vision_encoder: bool | None = None  # none: the train.policy setting
    train_expert_only: bool | None = None


@dataclass
class ReplayArgs:
    strategy: str = "full"  # full: whole earlier datasets; budget: a bounded share of each one's episodes
    budget: float = 0.05  # budget strategy: share of each earlier task's training episodes kept (at least one)


@dataclass
class EvalArgs:
    episodes: int = 10  # closed-loop episodes per seen simulated task after each stage (0 = offline loss only)
    num_workers: int = 2
    max_steps: int = 500
    seed: int = 1000  # evaluation starts, disjoint from collection's default seed 0
    val_batches: int = 8  # batches of held-out frames per task for the offline validation loss


@dataclass
class ForgettingArgs:
    """Status of an earlier task from its validation loss relative to its own loss right after it was learnt."""

    slight: float = 1.1  # loss ratio above this: slight degradation
    significant: float = 1.5  # above this: significant forgetting


@dataclass
class ContinualConfig:
    method: str = "replay"
    output_dir: str = "outputs/continual"
    base_lr: float = 1e-4
    warmup_fraction: float = 0.05  # of each stage's steps
    final_lr_ratio: float = 0.05  # each stage's cosine decays to lr × this
    stats: str = "all"  # normalization fixed for every stage: all (every task's data) | first (stage 1's only)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=32, save_freq=500, val_freq=0))
    replay: ReplayArgs = field(default_factory=ReplayArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    forgetting: ForgettingArgs = field(default_factory=ForgettingArgs)
    config_path: str | None = None
    tasks: list[TaskSpec] = field(default_factory=list, metadata=FILE_ONLY)
    stages: list[StageSpec] = field(default_factory=list, metadata=FILE_ONLY)

    # --- construction ---
    @classmethod
    def from_flags(cls, argv: list[str]) -> ContinualConfig:
        config = apply_flags(cls(), argv)
        if config.config_path:
            config = cls.from_mapping(load_config_file(config.config_path))
            apply_flags(config, argv)
        config.validate()
        return config

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ContinualConfig:
        values = dict(values)
        tasks, stages = values.pop("tasks", []), values.pop("stages", [])
        config = apply_mapping(cls(), values)
        config.tasks = [_record(TaskSpec, t, f"tasks[{i}]") for i, t in enumerate(_list(tasks, "tasks"))]
        config.stages = [_stage(s, f"stages[{i}]") for i, s in enumerate(_list(stages, "stages"))]
        return config

    def to_dict(self) -> dict[str, Any]:
        out = to_mapping(self)
        out["tasks"] = [to_mapping(t) for t in self.tasks]
        out["stages"] = [{**to_mapping(s), "replay": dict(s.replay)} for s in self.stages]
        return out

    # --- checks ---
    def validate(self) -> None:
        _one_of("method", self.method, METHODS)
        _one_of("replay.strategy", self.replay.strategy, STRATEGIES)
        _one_of("stats", self.stats, STATS)
        if not 0.0 < self.replay.budget <= 1.0:
            raise ConfigError(f"--replay.budget must be in (0, 1], got {self.replay.budget}")
        if not (self.base_lr > 0 and 0 <= self.warmup_fraction < 1 and 0 < self.final_lr_ratio <= 1):
            raise ConfigError(
                f"need base_lr > 0, warmup_fraction in [0, 1), final_lr_ratio in (0, 1]; got {self.base_lr}, "
                f"{self.warmup_fraction}, {self.final_lr_ratio}"
            )
        if self.eval.episodes < 0 or self.eval.val_batches < 1:
            raise ConfigError("--eval.episodes must be >= 0 and --eval.val_batches >= 1")
        if not 1.0 <= self.forgetting.slight <= self.forgetting.significant:
            raise ConfigError("forgetting thresholds must satisfy 1 <= slight <= significant")
        data = self.train.dataset
        if data.root or data.weights or data.episode_fraction or data.stats_path:
            raise ConfigError(
                "train.dataset.root/weights/episode_fraction/stats_path are set per stage from `tasks`, `stages` and "
                "`replay`; leave them unset"
            )
        if not self.tasks or not self.stages:
            raise ConfigError("a continual run needs `tasks` and `stages` lists (in the --config_path file)")
        ids = [t.id for t in self.tasks]
        for i, task in enumerate(self.tasks):
            if not task.id or not task.root:
                raise ConfigError(f"tasks[{i}] needs an `id` and a dataset `root`, got {task}")
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ConfigError(f"task ids must be unique; repeated: {duplicated}")
        for k, stage in enumerate(self.stages):
            if stage.task not in ids:
                raise ConfigError(f"stage {k + 1} learns unknown task {stage.task!r}; tasks are {ids}")
            if stage.steps < 1 or not stage.lr_factor > 0:
                raise ConfigError(f"stage {k + 1}: steps must be >= 1 and lr_factor > 0")
            self.mixture(k)  # raises on bad replay weights

    # --- what a stage trains on ---
    def learnt_before(self, stage: int) -> list[str]:
        """Task ids learnt in stages before `stage` (0-based), in order of first appearance."""
        return list(dict.fromkeys(s.task for s in self.stages[:stage]))

    def mixture(self, stage: int) -> dict[str, float]:
        """Task id → sampling share (summing to 1) of stage `stage` (0-based) under this config's method."""
        spec = self.stages[stage]
        where = f"stage {stage + 1} ({spec.task})"
        earlier = self.learnt_before(stage)
        weights = {}
        for task_id, weight in spec.replay.items():
            if task_id != spec.task and task_id not in earlier:
                learnt = [k + 1 for k, s in enumerate(self.stages) if s.task == task_id]
                when = f"it is first learnt in stage {learnt[0]}" if learnt else "no stage learns it"
                raise ConfigError(f"{where}: replay weight for task {task_id!r}, which is not learnt yet ({when})")
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"{where}: replay weight of {task_id!r} must be a number >= 0, got {weight!r}")
            weights[task_id] = float(weight)
        if spec.task not in weights:
            rest = 1.0 - sum(weights.values())
            if rest <= 0:
                raise ConfigError(
                    f"{where}: replay weights of earlier tasks sum to {sum(weights.values()):g}, leaving nothing for "
                    f"the stage's own task; list {spec.task!r} with its own weight"
                )
            weights[spec.task] = rest
        total = sum(weights.values())
        if total <= 0 or weights[spec.task] <= 0:
            raise ConfigError(f"{where}: weights must sum to a positive value with {spec.task!r} > 0, got {weights}")
        if self.method == "sequential":
            return {spec.task: 1.0}
        return {task_id: w / total for task_id, w in weights.items() if w > 0}

    def task(self, task_id: str) -> TaskSpec:
        return next(t for t in self.tasks if t.id == task_id)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"`{name}` must be a list of records, got {type(value).__name__}")
    return value


def _record(cls: type, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    try:
        return apply_mapping(cls(), values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _stage(values: Any, where: str) -> StageSpec:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}")
    values = dict(values)
    replay = values.pop("replay", None) or {}
    if not isinstance(replay, dict):
        raise ConfigError(f"{where}.replay must map task ids to weights, got {replay!r}")
    stage = _record(StageSpec, values, where)
    stage.replay = {str(k): v for k, v in replay.items()}
    return stage
