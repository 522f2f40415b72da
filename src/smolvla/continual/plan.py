"""From a continual config to concrete training runs: one `TrainConfig` per stage, sharing fixed normalization.

Every stage fine-tunes the previous stage's final checkpoint. Three things must not drift between stages, or an
earlier task would be "forgotten" by bookkeeping rather than by its weights:
- normalization statistics: computed once (`stats: all` tasks' data, or `first` stage's) and given to every stage;
- the tokenizer: a from-scratch model's is learnt once from every task's instruction (later stages inherit it);
- the validation split: each task's held-out episodes come from the same seeded split in every stage.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from smolvla.atomic import atomic_directory, atomic_write_text
from smolvla.continual.config import ContinualConfig
from smolvla.data import split_episodes
from smolvla.data.meta import DatasetError, DatasetMeta, load_meta
from smolvla.data.stats import aggregate_stats, stats_to_json
from smolvla.errors import ConfigError
from smolvla.keys import ACTION_KEY, STATE_KEY
from smolvla.model.checkpoint import CONFIG_NAME, PRETRAINED_MODEL
from smolvla.model.config import SmolVLAConfig
from smolvla.model.presets import preset_config
from smolvla.processors import TaskTokenizer
from smolvla.sim.tasks import canonical
from smolvla.train.build import policy_dir
from smolvla.train.checkpoint import checkpoints_dir, step_name
from smolvla.train.config import TrainConfig

STATS_FILE = "stats.json"
TOKENIZER_DIR = "tokenizer"


@dataclass
class Stage:
    name: str  # directory name under <run>/stages/
    task: str | None  # the task learnt (None: multitask, all at once)
    mixture: dict[str, float]  # task id → sampling share
    seen: list[str]  # task ids evaluated after this stage
    train: TrainConfig

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)

    @property
    def final_checkpoint(self) -> Path:
        return checkpoints_dir(self.output_dir) / step_name(self.train.steps) / PRETRAINED_MODEL


def run_dir(config: ContinualConfig) -> Path:
    return Path(config.output_dir) / config.method


def stages(config: ContinualConfig) -> list[Stage]:
    """The training runs of `config.method`: one per stage, or a single multi-task run over every task."""
    out = run_dir(config)
    if config.method == "multitask":
        ids = list(dict.fromkeys(s.task for s in config.stages))
        steps = sum(s.steps for s in config.stages)
        train = _train_config(config, out / "stages" / "all", ids, (), steps, config.base_lr, None, None)
        shares = {i: 1.0 / len(ids) for i in ids}  # nominal: sampled in proportion to frames
        return [Stage("all", None, shares, ids, train)]
    plan, previous = [], None
    for k, spec in enumerate(config.stages):
        mixture = config.mixture(k)
        ids = [spec.task] + [t for t in mixture if t != spec.task]
        weights = tuple(mixture[t] for t in ids)
        name = f"{k + 1:02d}_{spec.task}"
        train = _train_config(
            config, out / "stages" / name, ids, weights, spec.steps, config.base_lr * spec.lr_factor, previous, spec
        )
        seen = list(dict.fromkeys([*config.learnt_before(k), spec.task]))
        plan.append(Stage(name, spec.task, mixture, seen, train))
        previous = plan[-1].final_checkpoint
    return plan


def _train_config(config, output_dir, ids, weights, steps, lr, previous, spec) -> TrainConfig:
    train = copy.deepcopy(config.train)
    train.output_dir, train.steps = str(output_dir), steps
    train.save_checkpoint, train.save_freq = True, min(train.save_freq, steps)  # the next stage starts from it
    data = train.dataset
    data.root = tuple(config.task(t).root for t in ids)
    data.weights = tuple(weights)
    if config.replay.strategy == "budget" and config.method == "replay" and len(ids) > 1:
        data.episode_fraction = (1.0,) + (config.replay.budget,) * (len(ids) - 1)  # ids[0] is the stage's own task
    data.stats_path = str(run_dir(config) / STATS_FILE)
    policy = train.policy
    if previous is not None:  # fine-tune the previous stage: its architecture and tokenizer come with it
        policy.path, policy.tokenizer = str(previous), None
        for name in policy.ARCHITECTURE:
            setattr(policy, name, None)
    elif policy.path is None and policy.tokenizer is None:
        policy.tokenizer = str(run_dir(config) / TOKENIZER_DIR)
    policy.optimizer_lr = lr
    policy.scheduler_warmup_steps = round(steps * config.warmup_fraction)
    policy.scheduler_decay_steps = steps
    policy.scheduler_decay_lr = lr * config.final_lr_ratio
    if spec is not None:
        for name in ("freeze_vision_encoder", "train_expert_only"):
            if getattr(spec, name) is not None:
                setattr(policy, name, getattr(spec, name))
    return train


def task_metas(config: ContinualConfig) -> dict[str, DatasetMeta]:
    """Every task's dataset metadata, checked to fit one model: same state/action/cameras, within its max dims."""
    metas = {}
    for task in config.tasks:
        try:
            metas[task.id] = load_meta(task.root)
        except DatasetError as e:
            raise DatasetError(f"task {task.id!r}: {e}") from e
    max_dims = _model_max_dims(config)
    first_id = config.tasks[0].id
    reference = _signature(metas[first_id])
    for k, spec in enumerate(config.stages):
        features = metas[spec.task].features
        for key, limit in ((STATE_KEY, max_dims[0]), (ACTION_KEY, max_dims[1])):
            if key not in features:
                raise DatasetError(f"task {spec.task!r} ({config.task(spec.task).root}) has no {key!r} feature")
            width = int(features[key]["shape"][0])
            if width > limit:
                raise ConfigError(
                    f"stage {k + 1} ({spec.task}): its dataset's {key!r} has {width} dims, more than the model's "
                    f"{'max_state_dim' if key == STATE_KEY else 'max_action_dim'} {limit}"
                )
    for task_id, meta in metas.items():
        if _signature(meta) != reference:
            raise DatasetError(
                f"task {task_id!r} has features {_signature(meta)} but task {first_id!r} has {reference}: one model "
                "learns every task, so state, action and cameras must agree (rename or pad the datasets)"
            )
        if meta.stats is None:
            raise DatasetError(f"task {task_id!r}: {meta.root} has no meta/stats.json")
    if config.eval.episodes:
        for task in config.tasks:
            if task.sim_task:
                canonical(task.sim_task)  # a typo fails now, not after hours of training
    return metas


def _signature(meta: DatasetMeta) -> dict[str, list]:
    return {k: list(f["shape"]) for k, f in meta.features.items() if k.startswith(("observation", "action"))}


def _model_max_dims(config: ContinualConfig) -> tuple[int, int]:
    if config.train.policy.path:
        model = SmolVLAConfig.from_json(policy_dir(config.train.policy.path) / CONFIG_NAME)
        return model.max_state_dim, model.max_action_dim
    fields = preset_config(config.train.policy.preset)
    return (
        int(fields.get("max_state_dim", SmolVLAConfig.max_state_dim)),
        int(fields.get("max_action_dim", SmolVLAConfig.max_action_dim)),
    )


def write_shared(config: ContinualConfig, metas: dict[str, DatasetMeta]) -> None:
    """The run's fixed normalization statistics and (from scratch) tokenizer, written once."""
    out = run_dir(config)
    if not (out / STATS_FILE).is_file():
        chosen = [metas[config.stages[0].task]] if config.stats == "first" else list(metas.values())
        stats = chosen[0].stats if len(chosen) == 1 else aggregate_stats([m.stats for m in chosen])
        atomic_write_text(out / STATS_FILE, json.dumps(stats_to_json(stats), indent=2) + "\n")
    policy = config.train.policy
    if policy.path is None and policy.tokenizer is None and not (out / TOKENIZER_DIR).is_dir():
        instructions = list(dict.fromkeys(t for m in metas.values() for t in m.tasks))
        atomic_directory(out / TOKENIZER_DIR, TaskTokenizer.train(instructions).save)


def validation_split(config: ContinualConfig, meta: DatasetMeta) -> list[int]:
    """A task's held-out episodes: the same split the trainer makes, in every stage."""
    _, val = split_episodes(meta.episode_index.tolist(), config.train.dataset.val_fraction, config.train.seed)
    return val
