"""What a robot gives and takes, for anything that drives one: an `Observation` in, one action out.

The contract between the control loop (`smolvla.serve.robot.RobotClient`) and the robots it drives — a Meta-World
task (`smolvla.sim.robot`), a recorded episode replayed (`smolvla.data.replay`), or a physical arm — so that each
robot lives beside its own world and the loop knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Observation:
    state: np.ndarray  # (state_dim,) float32, robot units
    images: dict[str, np.ndarray]  # policy camera key -> (H, W, 3) uint8
    task: str


class Robot(Protocol):
    fps: float

    def reset(self, seed: int) -> Observation: ...

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        """Execute one action: (observation, success, episode over)."""
        ...

    def hold(self, last_action: np.ndarray | None) -> np.ndarray:
        """The action that keeps the robot still when no action is queued."""
        ...
