"""`smolvla collect`: scripted-expert demonstrations on Meta-World, written as a LeRobot v3.0 dataset.

Episodes are staged one file each in `<output_dir>.partial/` as they finish, so an interrupted run restarts where it
stopped (same config → finished episodes are kept). Only when every task has its quota of successful episodes is the
dataset written, atomically, and the staging directory removed. Failed expert episodes are retried with the next
seeds of the same task (up to `max_attempts_factor` × the quota). Which episodes end up in the dataset depends only on
the config, never on the number of workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smolvla.data.video import VideoEncoderHangError, VideoSettings
from smolvla.data.writer import DatasetWriter
from smolvla.errors import ConfigError
from smolvla.sim.agents import ExpertAgent
from smolvla.sim.metaworld_env import JOINT_STARTS, MetaWorldConfig, MetaWorldEnv, SimError
from smolvla.sim.rollout import Episode, Job, episode_seed, run_jobs
from smolvla.sim.tasks import instruction, resolve_tasks

COLLECT_META = "smolvla_collect.json"


@dataclass
class CollectConfig:
    env: MetaWorldConfig = field(default_factory=lambda: MetaWorldConfig(task="mt10"))
    episodes_per_task: int = 10  # successful episodes kept per task
    output_dir: str = "outputs/datasets/metaworld"
    noise_std: float = 0.0  # Gaussian action noise added to the expert (recorded as executed)
    seed: int = 0
    num_workers: int = 1
    max_attempts_factor: int = 3
    overwrite: bool = False


@dataclass(frozen=True)
class _ExpertFactory:
    """Picklable agent factory for worker processes."""

    noise_std: float

    def __call__(self) -> ExpertAgent:
        return ExpertAgent(self.noise_std)


def _staged_path(staging: Path, task: str, index: int) -> Path:
    return staging / f"{task}__{index:06d}.npz"


def _stage(staging: Path, episode: Episode) -> None:
    """Write one finished episode (frames only if it succeeded) via a temp file, so a kill leaves no torn file."""
    path = _staged_path(staging, episode.task, episode.index)
    tmp = path.with_suffix(".tmp.npz")
    arrays = dict(episode.frames) if episode.success and episode.frames else {}
    meta = {"seed": episode.seed, "success": episode.success, "length": episode.length}
    np.savez_compressed(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    os.replace(tmp, path)


def _load_staged(path: Path, with_frames: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(path) as data:
        meta = json.loads(bytes(data["__meta__"]).decode())
        frames = {k: data[k] for k in data.files if k != "__meta__"} if with_frames else {}
    return meta, frames


# Env settings added after datasets were first recorded: left out of the record at their defaults, so those datasets
# still match the configs that would collect them.
LATER_ENV_SETTINGS = (
    "camera_offset", "light_scale", "instruction", "camera_pose", "vary_joint_start", "steps_after_success",
    "joint_start", "hand_start_spread",
)  # fmt: skip


def _config_record(config: CollectConfig, tasks: list[str]) -> dict[str, Any]:
    record = dataclasses.asdict(config)
    record["env"]["task"] = tasks
    for key in ("output_dir", "num_workers", "overwrite"):  # do not change which episodes are collected
        record.pop(key)
    record = json.loads(json.dumps(record))
    defaults = json.loads(json.dumps(dataclasses.asdict(MetaWorldConfig())))
    for key in LATER_ENV_SETTINGS:
        if record["env"][key] == defaults[key]:  # recorded as before these settings existed
            record["env"].pop(key)
    return record


def collected_with(root: Path, config: CollectConfig) -> bool:
    """Whether `root` already holds the dataset `config` would collect (same tasks, quota, seeds, env settings)."""
    path = Path(root) / "meta" / COLLECT_META
    if not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("config")
    return saved == _config_record(config, resolve_tasks(config.env.task))


def _successes(outcomes: dict[tuple[str, int], bool], task: str) -> int:
    return sum(ok for (name, _), ok in outcomes.items() if name == task)


def _open_staging(staging: Path, record: dict[str, Any]) -> dict[tuple[str, int], bool]:
    """Create the staging directory, or check an interrupted one matches; returns its episodes' outcomes."""
    if not staging.exists():
        staging.mkdir(parents=True)
        (staging / "config.json").write_text(json.dumps(record, indent=2))
        return {}
    saved = json.loads((staging / "config.json").read_text()) if (staging / "config.json").exists() else None
    if saved != record:
        raise ConfigError(
            f"{staging} holds an interrupted collection with a different config; delete it to start over "
            f"(saved: {saved}, now: {record})"
        )
    outcomes = {}
    for path in staging.glob("*__*.npz"):
        if path.name.endswith(".tmp.npz"):  # killed while writing it
            path.unlink()
            continue
        task, index = path.stem.rsplit("__", 1)
        outcomes[(task, int(index))] = _load_staged(path, with_frames=False)[0]["success"]
    return outcomes


def collect(config: CollectConfig, progress: bool = True) -> Path:
    """Run the experts until each task has `episodes_per_task` successes; write and return the dataset root."""
    tasks = resolve_tasks(config.env.task)
    if config.episodes_per_task < 1 or config.max_attempts_factor < 1:
        raise ConfigError("episodes_per_task and max_attempts_factor must be >= 1")
    if config.env.vary_joint_start and (fixed := [task for task in tasks if task not in JOINT_STARTS]):
        raise ConfigError(f"env.vary_joint_start is defined for {sorted(JOINT_STARTS)}, not for {fixed}")
    root = Path(config.output_dir)
    if root.exists() and not config.overwrite:
        raise ConfigError(f"{root} already exists; pass --overwrite=true or choose another --output_dir")
    probe = MetaWorldEnv(dataclasses.replace(config.env, task=tasks[0]))  # bad camera / GL: fail before any work
    features, fps = probe.dataset_features(), probe.fps
    probe.close()

    staging = root.with_name(root.name + ".partial")
    record = _config_record(config, tasks)
    outcomes = _open_staging(staging, record)
    if outcomes and progress:
        print(f"resuming: {len(outcomes)} episodes already staged in {staging}", file=sys.stderr)

    quota, cap = config.episodes_per_task, config.episodes_per_task * config.max_attempts_factor
    bar = tqdm(total=quota * len(tasks), desc="demos", unit="ep", disable=not progress)
    bar.update(sum(min(quota, _successes(outcomes, task)) for task in tasks))
    factory = _ExpertFactory(config.noise_std)
    while True:
        jobs = []
        for task in tasks:  # the lowest untried attempt indices: the kept set never depends on interruptions
            untried = (i for i in range(cap) if (task, i) not in outcomes)
            for index in itertools.islice(untried, max(quota - _successes(outcomes, task), 0)):
                jobs.append(Job(task, index, episode_seed(config.seed, task, index), record=True))
        if not jobs:
            break
        for episode in run_jobs(jobs, config.env, factory, config.num_workers):
            _stage(staging, episode)
            outcomes[(episode.task, episode.index)] = episode.success
            bar.update(int(episode.success))
    bar.close()

    short = {task: _successes(outcomes, task) for task in tasks if _successes(outcomes, task) < quota}
    if short:
        raise SimError(f"the expert reached fewer than {quota} successes in {cap} attempts on: {short}")
    try:
        _write_dataset(root, features, fps, tasks, quota, outcomes, staging, record, config.overwrite)
    except VideoEncoderHangError as e:  # the watchdog restarts the writer from the staged episodes, once
        print(f"{e}; rewriting {root} from the staged episodes with H.264 (libx264)", file=sys.stderr)
        video = VideoSettings(codec="libx264", preset=None)
        _write_dataset(root, features, fps, tasks, quota, outcomes, staging, record, config.overwrite, video)
    shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_dataset(
    root: Path,
    features: dict[str, Any],
    fps: int,
    tasks: list[str],
    quota: int,
    outcomes: dict[tuple[str, int], bool],
    staging: Path,
    record: dict[str, Any],
    overwrite: bool,
    video: VideoSettings | None = None,
) -> None:
    """The first `quota` successful attempts of each task, in task order, as one atomic dataset."""
    episodes_meta = []
    # Built inside the staging directory: a kill during this final write leaves nothing beside the output, and the
    # next run (which resumes from the staged episodes) removes the half-written dataset.
    writer = DatasetWriter(root, fps, features, "sawyer", video, overwrite=overwrite, staging=staging)
    try:
        for task in tasks:
            kept = sorted(i for (name, i), ok in outcomes.items() if name == task and ok)[:quota]
            for index in kept:
                meta, frames = _load_staged(_staged_path(staging, task, index), with_frames=True)
                episode_index = writer.add_episode(frames, instruction(task))
                episodes_meta.append({"episode_index": episode_index, "task": task, "attempt": index, **meta})
        attempts = {task: sum(1 for (name, _) in outcomes if name == task) for task in tasks}
        writer.finalize({COLLECT_META: {"config": record, "attempts": attempts, "episodes": episodes_meta}})
    except BaseException:
        writer.abort()
        raise
