"""A recorded dataset episode as a robot (`smolvla.robot_io.Robot`): serve and client end to end, no simulator."""

from __future__ import annotations

import numpy as np

from smolvla.data.dataset import LeRobotDataset
from smolvla.keys import ACTION_KEY, STATE_KEY, TASK_KEY
from smolvla.robot_io import Observation


class ReplayRobot:
    """A recorded episode as a robot: observations are the dataset's frames in order, actions are only logged.
    For exercising a server and client end to end without a simulator."""

    def __init__(self, root: str, episode: int = 0, fps: float | None = None):
        self.dataset = LeRobotDataset(root, [episode])
        self.fps = float(fps or self.dataset.meta.fps)
        self.cameras = self.dataset.meta.camera_keys
        self.actions: list[np.ndarray] = []
        self._index = 0

    def _observation(self) -> Observation:
        item = self.dataset[self._index]
        images = {k: (item[k] * 255).round().byte().permute(1, 2, 0).numpy() for k in self.cameras}
        return Observation(item[STATE_KEY].numpy().astype(np.float32), images, item[TASK_KEY])

    def reset(self, seed: int) -> Observation:
        self._index, self.actions = 0, []
        return self._observation()

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        self.actions.append(np.asarray(action))
        self._index = min(self._index + 1, len(self.dataset) - 1)
        return self._observation(), False, len(self.actions) >= len(self.dataset)

    def hold(self, last_action: np.ndarray | None) -> np.ndarray:
        return np.zeros_like(self.dataset[0][ACTION_KEY].numpy()) if last_action is None else last_action
