"""A Meta-World task as a robot (`smolvla.robot_io.Robot`), for the control loop of `smolvla client`."""

from __future__ import annotations

from typing import Any

import numpy as np

from smolvla.robot_io import Observation
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv
from smolvla.sim.tasks import instruction


class MetaWorldRobot:
    """A Meta-World task as a robot: observations in the policy's keys, zero end-effector motion to hold."""

    def __init__(self, task: str, cameras: dict[str, str], image_size: int, max_steps: int = 500):
        self.env = MetaWorldEnv(MetaWorldConfig(task=task, cameras=tuple(cameras.values()), image_size=image_size,
                                                max_steps=max_steps))  # fmt: skip
        self.cameras, self.task, self.fps = cameras, instruction(task), float(self.env.fps)

    def _observation(self, raw: dict[str, Any]) -> Observation:
        images = {key: raw["pixels"][camera] for key, camera in self.cameras.items()}
        return Observation(raw["agent_pos"].astype(np.float32), images, self.task)

    def reset(self, seed: int) -> Observation:
        return self._observation(self.env.reset(seed=seed)[0])

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        raw, _, terminated, truncated, info = self.env.step(action)
        return self._observation(raw), bool(info["success"]), terminated or truncated

    def hold(self, last_action: np.ndarray | None) -> np.ndarray:
        held = np.zeros(4, dtype=np.float32)  # no end-effector motion...
        if last_action is not None:
            held[3] = last_action[3]  # ...and the gripper keeps its command
        return held

    def close(self) -> None:
        self.env.close()
