"""Turn a SmolVLA checkpoint into a simulator agent, and name agents on the command line.

The agent is the serving-side glue: env observation → LeRobot batch (state, camera tensors, instruction) →
preprocessor → policy (chunked, queued) → postprocessor → one action as numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import IMAGE_PREFIX, STATE_KEY, TASK_KEY
from smolvla.model.checkpoint import pretrained_dir
from smolvla.processors import ImagesToFloat, RenameObservations, load_processors
from smolvla.processors.factory import robot_features, robot_names
from smolvla.runtime import load_policy
from smolvla.sim.agents import ExpertAgent, RandomAgent

BUILTIN_AGENTS = ("expert", "random")


class SmolVLAAgent:
    """A policy plus its processors, acting on `MetaWorldEnv` observations (or any env with the same keys)."""

    def __init__(self, policy, preprocessor, postprocessor, rename_map: dict[str, str] | None = None):
        """`rename_map` (env key → the key the checkpoint's preprocessor expects, `--rename_map`) points a policy
        trained on other camera names at the env's cameras; the checkpoint's own renames (from training) apply
        after it."""
        self.policy = policy.eval()
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        self.rename = RenameObservations(rename_map)
        env_key = robot_names(preprocessor, rename_map)
        spec = robot_features(preprocessor, postprocessor, policy.config)  # the cameras this robot has
        self._shapes = {env_key(k): shape for k, shape in spec.items() if k.startswith(IMAGE_PREFIX)}
        self.cameras = {key: key.removeprefix(IMAGE_PREFIX) for key in self._shapes}  # env key → env camera
        self.new_chunk = True
        self.to_float = ImagesToFloat()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str = "cpu",
        num_steps: int | None = None,
        rename_map: dict | None = None,
        embodiment: str | None = None,
        runtime: str = "torch",
        n_action_steps: int | None = None,
    ) -> SmolVLAAgent:
        """`embodiment`: which robot's processors, for a policy trained on several; `runtime`: torch, onnx or
        onnx_int8 (`smolvla.runtime`); `num_steps` / `n_action_steps` override the checkpoint's denoising steps and
        the actions executed per chunk (how often it re-plans), which need no retraining."""
        policy = load_policy(path, runtime, device)
        if num_steps is not None:
            policy.config.num_steps = int(num_steps)
        if n_action_steps is not None:
            chunk = policy.config.chunk_size
            if not 1 <= int(n_action_steps) <= chunk:
                raise ConfigError(
                    f"--policy.n_action_steps={n_action_steps}: expected 1 to the checkpoint's chunk_size ({chunk})"
                )
            policy.config.n_action_steps = int(n_action_steps)
        return cls(policy, *load_processors(path, device=device, embodiment=embodiment), rename_map=rename_map)

    @property
    def image_size(self) -> int | None:
        """Side of the (square) camera images the policy was trained on, if it has cameras."""
        shapes = {tuple(shape[1:]) for shape in self._shapes.values()}
        if len(shapes) != 1:
            return None
        height, width = shapes.pop()
        return height if height == width else None

    def reset(self, seed: int = 0) -> None:
        torch.manual_seed(seed)  # the flow-matching noise: same seed, same rollout
        self.policy.reset()

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        # Observations are only read when a new chunk is due: the other calls dequeue, so skip their preprocessing.
        self.new_chunk = self.policy.will_predict
        action = self.policy.select_action(self.prepare(observation) if self.new_chunk else {})
        return self.postprocessor({"action": action})["action"][0].numpy()

    def prepare(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The env's observation as the policy's input batch: renamed, images to float, through the preprocessor."""
        return self.preprocessor(self.rename(self.to_float(self._batch(observation))))

    def _batch(self, observation: dict[str, Any]) -> dict[str, Any]:
        """The env's observation under its own keys (renamed next), frames still raw uint8."""
        pixels = observation.get("pixels", {})
        batch: dict[str, Any] = {
            STATE_KEY: torch.as_tensor(observation["agent_pos"], dtype=torch.float32),
            TASK_KEY: observation["task"],
        }
        for key, camera in self.cameras.items():
            if camera not in pixels:
                raise ConfigError(
                    f"the policy needs camera {camera!r} ({key}); the env renders {sorted(pixels)}: set "
                    f"--env.cameras to include it, or map an env camera onto it with --rename_map"
                )
            batch[key] = pixels[camera]
        return batch


@dataclass(frozen=True)
class AgentFactory:
    """Picklable recipe for an agent, so worker processes can build their own: `expert`, `random` or a checkpoint."""

    path: str = "expert"
    device: str = "cpu"
    num_steps: int | None = None
    noise_std: float = 0.0
    rename_map: tuple[tuple[str, str], ...] = ()  # env key → checkpoint key (a tuple: the recipe stays hashable)
    embodiment: str | None = None
    runtime: str = "torch"
    n_action_steps: int | None = None

    def __call__(self) -> Any:
        if self.path == "expert":
            return ExpertAgent(self.noise_std)
        if self.path == "random":
            return RandomAgent()
        try:
            directory = pretrained_dir(self.path)  # a local checkpoint, or a hub id through the cache
        except CheckpointError as e:
            raise ConfigError(f"--policy.path={self.path!r} is neither {BUILTIN_AGENTS} nor a checkpoint: {e}") from e
        return SmolVLAAgent.from_pretrained(
            directory, self.device, self.num_steps, dict(self.rename_map), self.embodiment, self.runtime,
            self.n_action_steps,
        )  # fmt: skip
