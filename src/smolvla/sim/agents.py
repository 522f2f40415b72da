"""Non-learned agents for Meta-World: the scripted experts (demonstrators and a sanity baseline) and uniform noise.

An *agent* is anything with `select_action(observation) -> action (4,)`, optionally `reset(seed)` called at every
episode start; observations are `MetaWorldEnv`'s plus `task` (the language instruction), as LeRobot passes them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from smolvla.sim.metaworld_env import _import_metaworld
from smolvla.sim.tasks import INSTRUCTIONS, canonical

_TASK_OF_INSTRUCTION = {text: name for name, text in INSTRUCTIONS.items()}


class ExpertAgent:
    """Meta-World's scripted policy for the current task (read from the instruction), plus optional Gaussian noise.

    Noise (std in action units, clipped to [-1, 1]) makes demonstrations cover states slightly off the expert's path,
    so an imitating policy learns to recover; the recorded action is the executed, noisy one.
    """

    uses_pixels = False

    def __init__(self, noise_std: float = 0.0, task: str | None = None):
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.task = canonical(task) if task else None
        self._experts: dict[str, Any] = {}
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def _expert(self, task: str):
        if task not in self._experts:
            self._experts[task] = _import_metaworld().policies.ENV_POLICY_MAP[f"{task}-v3"]()
        return self._experts[task]

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        task = self.task or _TASK_OF_INSTRUCTION.get(observation.get("task", ""))
        if task is None:
            raise ValueError(
                f"the expert needs a known Meta-World instruction in observation['task'], got "
                f"{observation.get('task')!r}"
            )
        with warnings.catch_warnings():  # the experts warn on every saturated step; the env clips anyway
            warnings.simplefilter("ignore", UserWarning)
            action = np.asarray(self._expert(task).get_action(observation["environment_state"]), dtype=np.float32)
        if self.noise_std > 0:
            action = action + self._rng.normal(0.0, self.noise_std, size=action.shape).astype(np.float32)
        return np.clip(action, -1.0, 1.0)


class RandomAgent:
    """Uniform actions in [-1, 1]^4: the floor every learned policy must beat (≈ 0 % success)."""

    uses_pixels = False

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=4).astype(np.float32)
