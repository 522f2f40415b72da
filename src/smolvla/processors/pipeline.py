"""Composable, serializable processor pipelines (LeRobot's `policy_preprocessor.json` layout).

A processor step is a pure function of a batch dict (LeRobot's flat keys plus `task`), with a JSON config and
optional tensor state. A `Pipeline` applies its steps in order and saves itself as `<name>.json` plus one
`<name>_step_<i>_<registry_name>.safetensors` per step that has state, the file names LeRobot uses, so a checkpoint
directory carries everything needed to turn a raw observation into model input and a model output back into robot
actions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import load_file, save_file
from torch import Tensor

from smolvla.errors import CheckpointError, ConfigError

Batch = dict[str, Any]
_REGISTRY: dict[str, type[ProcessorStep]] = {}


class ProcessorStep:
    """One transformation of a batch. Subclasses set `registry_name` and implement `__call__` and `get_config`."""

    registry_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    # A derived step is rebuilt from the checkpoint when its pipeline loads (`smolvla.processors.load_processors`)
    # and never saved, so the files keep LeRobot's steps only and LeRobot loads them as they are.
    derived: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in (cls.registry_name, *cls.aliases):
            if name:
                _REGISTRY[name] = cls

    def __call__(self, batch: Batch) -> Batch:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def save_files(self, directory: Path) -> None:
        """Write non-tensor artefacts (e.g. a tokenizer) next to the pipeline JSON."""

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, Tensor], directory: Path | None) -> ProcessorStep:
        try:
            return cls(**config)
        except TypeError as e:
            raise ConfigError(f"processor step {cls.registry_name!r}: bad config {config}: {e}") from e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class Pipeline:
    """An ordered list of steps, itself a step-like callable, saved and loaded as a directory of files."""

    def __init__(self, steps: Iterable[ProcessorStep], name: str):
        self.steps = list(steps)
        self.name = name

    def __call__(self, batch: Batch) -> Batch:
        for step in self.steps:
            batch = step(batch)
        return batch

    def step(self, kind: type[ProcessorStep]) -> ProcessorStep:
        """The first step of a given class (e.g. to read the normalizer's stats)."""
        for s in self.steps:
            if isinstance(s, kind):
                return s
        raise KeyError(f"pipeline {self.name!r} has no {kind.__name__} step")

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, {self.steps})"

    def save(self, directory: str | Path) -> None:
        """Write `<name>.json` and the step state files into an existing directory (callers make it atomic); derived
        steps are left out."""
        directory = Path(directory)
        entries = []
        for i, step in enumerate(s for s in self.steps if not s.derived):
            entry: dict[str, Any] = {"registry_name": step.registry_name, "config": step.get_config()}
            state = step.state_dict()
            if state:
                entry["state_file"] = f"{self.name}_step_{i}_{step.registry_name}.safetensors"
                tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
                save_file(tensors, str(directory / entry["state_file"]))
            step.save_files(directory)
            entries.append(entry)
        text = json.dumps({"name": self.name, "steps": entries}, indent=2) + "\n"
        (directory / f"{self.name}.json").write_text(text)

    @classmethod
    def load(cls, directory: str | Path, name: str) -> Pipeline:
        """Read a pipeline saved by `save` (or by LeRobot); an unknown step is an error naming it."""
        directory = Path(directory)
        path = directory / f"{name}.json"
        if not path.is_file():
            raise CheckpointError(f"no processor file {path}")
        try:
            spec = json.loads(path.read_text())
            entries = spec["steps"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a processor pipeline file: {e}") from e
        steps = []
        for i, entry in enumerate(entries):
            registry_name = entry.get("registry_name")
            if registry_name not in _REGISTRY:
                raise CheckpointError(
                    f"{path}: step {i} has unknown registry_name {registry_name!r}; known: {sorted(_REGISTRY)}"
                )
            state = {}
            if entry.get("state_file"):
                state_path = directory / entry["state_file"]
                if not state_path.is_file():
                    raise CheckpointError(f"{path}: step {i} state file {state_path} is missing")
                state = load_file(str(state_path))
            steps.append(_REGISTRY[registry_name].from_config(entry.get("config", {}), state, directory))
        return cls(steps, spec.get("name", name))
