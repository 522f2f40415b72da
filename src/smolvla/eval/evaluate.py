"""`smolvla eval`: closed-loop success rates of an agent on Meta-World tasks, with fixed seeds and parallel workers.

Outputs in `output_dir`: `eval_info.json` (per episode, per task, per difficulty, overall), `success.png` (bar
chart per task) and `videos/<task>_<k>.mp4` for the first episodes of each task.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smolvla.atomic import atomic_write_text
from smolvla.errors import ConfigError
from smolvla.eval.agent import AgentFactory
from smolvla.eval.report import plot_success, print_table, write_videos
from smolvla.sim.metaworld_env import MetaWorldConfig
from smolvla.sim.rollout import Episode, Job, episode_seed, run_jobs
from smolvla.sim.tasks import DIFFICULTIES, DIFFICULTY, instruction, resolve_tasks

EVAL_SEED = 1000  # default base seed, disjoint from `smolvla collect`'s default (0): never evaluate on training starts


@dataclass
class PolicyRef:
    path: str = "expert"  # a checkpoint directory, or "expert" / "random"
    device: str = "cpu"
    num_steps: int | None = None  # override the checkpoint's denoising steps
    n_action_steps: int | None = None  # override the actions executed per chunk (1 .. the checkpoint's chunk_size)
    embodiment: str | None = None  # which robot's processors, for a policy trained on several


@dataclass
class EvalLoop:
    n_episodes: int = 10  # per task
    num_workers: int = 1
    videos_per_task: int = 1


@dataclass
class EvalConfig:
    policy: PolicyRef = field(default_factory=PolicyRef)
    env: MetaWorldConfig = field(default_factory=lambda: MetaWorldConfig(task="mt10"))
    eval: EvalLoop = field(default_factory=EvalLoop)
    seed: int = EVAL_SEED
    output_dir: str = "outputs/eval"
    # env key → the key the checkpoint expects, LeRobot's JSON form: '{"observation.images.corner2": "...camera1"}'
    rename_map: dict[str, str] = field(default_factory=dict)
    runtime: str = "torch"  # torch | onnx | onnx_int8 (exported once beside the checkpoint, then reused)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(episodes: list[Episode], tasks: list[str], told: str | None = None) -> dict[str, Any]:
    """Success per task and per difficulty group (task-averaged, as the SmolVLA paper reports MT50), lengths and
    chunk latency; `told`: the instruction given instead of each task's own (`--env.instruction`)."""
    per_task = {}
    for task in tasks:
        eps = sorted((e for e in episodes if e.task == task), key=lambda e: e.index)
        chunk_ms = [ms for e in eps for ms in e.chunk_ms]
        per_task[task] = {
            "instruction": told or instruction(task),
            "difficulty": DIFFICULTY[task],
            "episodes": len(eps),
            "success_rate": _mean([float(e.success) for e in eps]),
            "mean_length": _mean([float(e.length) for e in eps]),
            "chunk_ms_mean": _mean(chunk_ms),
            "chunk_ms_p50": float(np.median(chunk_ms)) if chunk_ms else None,
        }
    per_difficulty = {
        level: _mean([per_task[t]["success_rate"] for t in tasks if DIFFICULTY[t] == level])
        for level in DIFFICULTIES
        if any(DIFFICULTY[t] == level for t in tasks)
    }
    all_chunks = [ms for e in episodes for ms in e.chunk_ms]
    overall = {
        "success_rate": _mean([per_task[t]["success_rate"] for t in tasks]),
        "episodes": len(episodes),
        "mean_length": _mean([float(e.length) for e in episodes]),
        "chunk_ms_mean": _mean(all_chunks),
    }
    per_episode = [
        {"task": e.task, "index": e.index, "seed": e.seed, "success": e.success, "length": e.length}
        for e in sorted(episodes, key=lambda e: (tasks.index(e.task), e.index))
    ]
    return {"overall": overall, "per_difficulty": per_difficulty, "per_task": per_task, "episodes": per_episode}


@dataclass(frozen=True)
class _Given:
    """Factory returning a ready agent object (pickled to each worker when there are several)."""

    agent: Any

    def __call__(self) -> Any:
        return self.agent


def run_evaluation(
    agent: Any,
    env: MetaWorldConfig,
    tasks: list[str],
    n_episodes: int,
    seed: int = EVAL_SEED,
    num_workers: int = 1,
    videos_per_task: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], list[Episode]]:
    """Roll out `n_episodes` per task; returns the summary and the episodes (frames only for the video ones).

    `agent` is an agent (anything with `select_action`) or a zero-argument factory of one (e.g. `AgentFactory`),
    which worker processes call to build their own copy.
    """
    make_agent = _Given(agent) if hasattr(agent, "select_action") else agent
    if n_episodes < 1:
        raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
    if num_workers < 1 or videos_per_task < 0:
        raise ConfigError(f"num_workers must be >= 1 and videos_per_task >= 0, got {num_workers}, {videos_per_task}")
    if videos_per_task and not env.cameras:
        raise ConfigError("videos need at least one camera: set --env.cameras or --eval.videos_per_task=0")
    jobs = [
        Job(task, i, episode_seed(seed, task, i), record=i < videos_per_task)
        for task in tasks
        for i in range(n_episodes)
    ]

    runs = run_jobs(jobs, env, make_agent, num_workers)
    episodes = list(tqdm(runs, total=len(jobs), desc="eval", unit="ep", disable=not progress))
    return summarize(episodes, tasks, env.instruction), episodes


def env_for(agent: Any, env: MetaWorldConfig) -> MetaWorldConfig:
    """`env` rendering what a checkpoint agent reads: its cameras, at the image size it was trained with."""
    return dataclasses.replace(
        env, cameras=tuple(agent.cameras.values()), image_size=agent.image_size or env.image_size
    )


def evaluate(config: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """The `smolvla eval` job: resolve the agent and env, run, and write JSON, chart and videos."""
    tasks = resolve_tasks(config.env.task)
    policy = config.policy
    factory = AgentFactory(policy.path, policy.device, policy.num_steps,
                           rename_map=tuple(config.rename_map.items()), embodiment=policy.embodiment,
                           runtime=config.runtime, n_action_steps=policy.n_action_steps)  # fmt: skip
    env = dataclasses.replace(config.env)
    if config.policy.path not in ("expert", "random"):
        agent = factory()  # load once here to read the cameras and image size it was trained with
        env = env_for(agent, env)
        target: Any = factory if config.eval.num_workers > 1 else agent
    else:
        target = factory
    start = time.perf_counter()
    summary, episodes = run_evaluation(
        target, env, tasks, config.eval.n_episodes, config.seed, config.eval.num_workers,
        config.eval.videos_per_task, progress,
    )  # fmt: skip
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    summary["config"] = json.loads(json.dumps(dataclasses.asdict(config)))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary["videos"] = write_videos(episodes, env, out / "videos")
    summary["chart"] = str(plot_success(summary, out / "success.png"))
    atomic_write_text(out / "eval_info.json", json.dumps(summary, indent=2) + "\n")
    if progress:
        print_table(summary)
    return summary
