"""Run agents in Meta-World episodes, in this process or in a pool of worker processes.

Every episode is a pure function of (task, seed, agent): the env placement comes from `seed` and the agent is
re-seeded with it, so results do not depend on how episodes are spread over workers.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv
from smolvla.sim.tasks import task_index


def episode_seed(base_seed: int, task: str, index: int) -> int:
    """Seed of episode `index` of `task`: independent streams per (base seed, task), stable across task sets."""
    return int(np.random.SeedSequence([base_seed, task_index(task), index]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class Episode:
    """One rollout. `frames` holds per-step arrays (LeRobot feature names) when recording was asked for."""

    task: str
    index: int
    seed: int
    success: bool
    length: int
    reward: float
    chunk_ms: list[float] = field(default_factory=list)  # latency of each call that computed a new action chunk
    frames: dict[str, np.ndarray] | None = None


def _reset(agent: Any, seed: int) -> None:
    reset = getattr(agent, "reset", None)
    if reset is None:
        return
    accepts_seed = any(
        p.name == "seed" or p.kind is p.VAR_KEYWORD for p in inspect.signature(reset).parameters.values()
    )
    reset(seed=seed) if accepts_seed else reset()


def run_episode(env: MetaWorldEnv, agent: Any, seed: int, index: int = 0, record: bool = False) -> Episode:
    """Roll `agent` out from `env.reset(seed=seed)` until success or the step cap.

    With `record`, `frames` holds, per step, the observation the agent saw and the action it took (clipped to the
    action space), i.e. a LeRobot episode. An agent that sets `new_chunk = False` marks calls served from its
    action queue; only the other calls count as chunk latency. Agents with `uses_pixels = False` get no images
    (rendering is most of the cost of a step) unless the episode is recorded.
    """
    _reset(agent, seed)
    env.render_pixels = record or getattr(agent, "uses_pixels", True)
    observation, _ = env.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {}
    chunk_ms: list[float] = []
    success, reward, length = False, 0.0, 0
    while True:
        observation["task"] = env.instruction
        start = time.perf_counter()
        action = np.asarray(agent.select_action(observation), dtype=np.float32).reshape(-1)
        elapsed = (time.perf_counter() - start) * 1e3
        if getattr(agent, "new_chunk", True):
            chunk_ms.append(elapsed)
        action = np.clip(action, -1.0, 1.0)
        if record:
            for key, value in _frame(observation, action).items():
                steps.setdefault(key, []).append(value)
        observation, r, terminated, truncated, info = env.step(action)
        reward += r
        length += 1
        success = success or info["success"]
        if terminated or truncated:
            break
    frames = {k: np.stack(v) for k, v in steps.items()} if record else None
    return Episode(env.task, index, seed, success, length, reward, chunk_ms, frames)


def _frame(observation: dict[str, Any], action: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "observation.state": observation["agent_pos"],
        "observation.environment_state": observation["environment_state"],
        "action": action,
        **{f"observation.images.{cam}": image for cam, image in observation["pixels"].items()},
    }


@dataclass(frozen=True)
class Job:
    task: str
    index: int
    seed: int
    record: bool = False


class EpisodeRunner:
    """Holds one env per task (built on first use) and one agent; runs jobs. Lives in each worker process."""

    def __init__(self, env_config: MetaWorldConfig, make_agent: Callable[[], Any]):
        self.env_config = env_config
        self.agent = make_agent()
        self.envs: dict[str, MetaWorldEnv] = {}

    def __call__(self, job: Job) -> Episode:
        if job.task not in self.envs:
            self.envs[job.task] = MetaWorldEnv(replace(self.env_config, task=job.task))
        return run_episode(self.envs[job.task], self.agent, job.seed, job.index, job.record)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


_RUNNER: EpisodeRunner | None = None


def _init_worker(env_config: MetaWorldConfig, make_agent: Callable[[], Any]) -> None:
    global _RUNNER
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _RUNNER = EpisodeRunner(env_config, make_agent)
    if "torch" in sys.modules:  # a learned agent: workers share the cores, one thread each avoids oversubscription
        sys.modules["torch"].set_num_threads(1)


def _run_in_worker(job: Job) -> Episode:
    assert _RUNNER is not None
    return _RUNNER(job)


def run_jobs(
    jobs: Iterable[Job], env_config: MetaWorldConfig, make_agent: Callable[[], Any], workers: int = 1
) -> Iterator[Episode]:
    """Run jobs and yield episodes as they finish (any order). `make_agent` must pickle when `workers` > 1.

    Workers are spawned (not forked) processes: MuJoCo's GL context and torch's thread pool do not survive a fork.
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        runner = EpisodeRunner(env_config, make_agent)
        try:
            for job in jobs:
                yield runner(job)
        finally:
            runner.close()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), context, _init_worker, (env_config, make_agent)) as pool:
        pending = {pool.submit(_run_in_worker, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()
