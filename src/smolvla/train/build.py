"""The policy and processors a run trains: from a preset (shaped by the dataset), a checkpoint, or a resumed run.

Fine-tuning keeps the checkpoint's tokenizer but normalizes with the new dataset's statistics, as LeRobot does.
Either way the dataset must provide what the policy reads: its state and action widths and every camera it was
trained with; a mismatch is an error naming both sides, not a crash deep inside the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolvla import hub
from smolvla.data.meta import DatasetError
from smolvla.errors import CheckpointError, ConfigError
from smolvla.keys import ACTION_KEY, EMPTY_CAMERA_PREFIX, STATE_KEY
from smolvla.model.checkpoint import CONFIG_NAME, pretrained_dir
from smolvla.model.config import SmolVLAConfig
from smolvla.model.presets import preset_config
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import EmbodimentProcessors, Pipeline, TaskTokenizer, Tokenize, load_processors, make_processors
from smolvla.processors.language import TOKENIZER_FILE
from smolvla.train.config import PolicyArgs
from smolvla.train.data import TrainData
from smolvla.train.embodiment import MixedPreprocessor


def policy_features(features: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """SmolVLA input/output features from a dataset's LeRobot features (cameras as channel-first)."""
    for key in (STATE_KEY, ACTION_KEY):
        if key not in features:
            raise DatasetError(f"the dataset has no {key!r} feature; it has {sorted(features)}")
    inputs: dict[str, Any] = {STATE_KEY: {"type": "STATE", "shape": list(features[STATE_KEY]["shape"])}}
    for key, spec in features.items():
        if spec["dtype"] in ("video", "image"):
            height, width, channels = spec["shape"]
            inputs[key] = {"type": "VISUAL", "shape": [channels, height, width]}
    if len(inputs) == 1:
        raise DatasetError("the dataset has no camera: SmolVLA needs at least one image feature")
    return inputs, {ACTION_KEY: {"type": "ACTION", "shape": list(features[ACTION_KEY]["shape"])}}


def check_compatible(
    policy: SmolVLAPolicy, features: dict[str, dict[str, Any]], fill_missing_cameras: bool = False
) -> None:
    """The dataset provides the policy's state and action widths and all of its (non-placeholder) cameras (or the
    run fills the missing ones with masked black images)."""
    inputs, outputs = policy_features(features)
    cfg = policy.config
    dataset_cams = [k for k in inputs if k != STATE_KEY]
    missing = [k for k in cfg.image_features if not k.startswith(EMPTY_CAMERA_PREFIX) and k not in inputs]
    if missing and not fill_missing_cameras:
        unused = [k for k in dataset_cams if k not in cfg.image_features]
        fill = "let the policy see masked black images in their place with --dataset.fill_missing_cameras=true"
        if unused:  # dataset cameras the policy does not know: perhaps the same cameras under other names
            fix = json.dumps(dict(zip(unused, missing, strict=False)))
            fill = f"map the dataset's names onto the policy's with --rename_map='{fix}' (check the pairing), {fill}"
        raise DatasetError(
            f"the dataset lacks the policy's cameras {missing}; it has {sorted(dataset_cams)}: {fill}, or train a new "
            "policy"
        )
    for key, want, have in (
        (STATE_KEY, cfg.state_dim, inputs[STATE_KEY]),
        (ACTION_KEY, cfg.action_dim, outputs[ACTION_KEY]),
    ):
        if have["shape"] != [want]:
            raise DatasetError(f"the dataset's {key!r} has shape {have['shape']}, the policy expects [{want}]")


def policy_dir(path: str, flag: str = "--policy.path") -> Path:
    """The pretrained_model directory a command-line path names, or a ConfigError naming the flag."""
    try:
        directory = pretrained_dir(path)
    except CheckpointError as e:
        raise ConfigError(f"{flag}={path!r}: {e}") from e
    if not (directory / CONFIG_NAME).is_file():
        raise ConfigError(f"{flag}={path!r} is not a pretrained_model directory: no {CONFIG_NAME}")
    return directory


def planned_chunk_size(args: PolicyArgs) -> int:
    """Chunk length of the policy `args` will build, known before building it (to read action chunks that long)."""
    if args.chunk_size is not None:
        return args.chunk_size
    if args.path is not None:
        return SmolVLAConfig.from_json(policy_dir(args.path) / CONFIG_NAME).chunk_size
    return int(preset_config(args.preset).get("chunk_size", SmolVLAConfig.chunk_size))


def make_tokenizer(args: PolicyArgs, tasks: list[str]) -> TaskTokenizer:
    """--policy.tokenizer (a directory or hub id), else the checkpoint's tokenizer (its own tokenizer.json, or the one
    its preprocessor names, e.g. the backbone's hub id as lerobot-train writes it), else a small BPE learnt from the
    dataset's instructions."""
    if args.tokenizer:
        try:
            source = hub.resolve(args.tokenizer)
        except hub.HubError as e:
            raise ConfigError(f"--policy.tokenizer: {e}") from e
        if not (source / TOKENIZER_FILE).is_file():
            raise ConfigError(f"--policy.tokenizer={args.tokenizer!r} has no {TOKENIZER_FILE} (looked in {source})")
        return TaskTokenizer.from_directory(source)
    if args.path is None:
        return TaskTokenizer.train(tasks)
    directory = policy_dir(args.path)
    if (directory / TOKENIZER_FILE).is_file():
        return TaskTokenizer.from_directory(directory)
    pre, _ = load_processors(directory)
    return pre.step(Tokenize).tokenizer


WIDTH_LIMITS = {STATE_KEY: "max_state_dim", ACTION_KEY: "max_action_dim"}


def check_widths(data: TrainData, limits: dict[str, int]) -> None:
    """Every robot's state and action fit the policy's padded widths (`limits`: max_state_dim, max_action_dim):
    SmolVLA pads a robot up to them and never crops one."""
    for embodiment in data.embodiments:
        for key, name in WIDTH_LIMITS.items():
            limit = limits[name]
            if embodiment.width(key) > limit:
                roots = [str(data.train.datasets[i].root) for i in embodiment.datasets]
                raise DatasetError(
                    f"dataset {', '.join(roots)} has a {embodiment.width(key)}-D {key!r}, wider than the policy's "
                    f"{name}={limit} (robots are zero-padded up to it, never cropped)"
                )


def build_policy(args: PolicyArgs, data: TrainData) -> SmolVLAPolicy:
    """A new policy of `args.preset` shaped by the dataset(s), or the `args.path` checkpoint, with `args` overrides."""
    overrides = args.overrides()
    if args.path is None:
        config = {**preset_config(args.preset), **overrides}
        check_widths(data, {name: config.get(name, getattr(SmolVLAConfig, name)) for name in WIDTH_LIMITS.values()})
        inputs, outputs = policy_features(data.features)
        return SmolVLAPolicy.from_preset(args.preset, input_features=inputs, output_features=outputs, **overrides)
    if data.mixed:
        raise ConfigError(
            f"datasets of several robots {[e.name for e in data.embodiments]} with a starting checkpoint "
            f"({args.path}): fine-tuning (or reflow) onto several embodiments is not supported yet; train them from a "
            "preset (--policy.preset), or one robot at a time"
        )
    policy = SmolVLAPolicy.from_pretrained(policy_dir(args.path))
    check_widths(data, {name: getattr(policy.config, name) for name in WIDTH_LIMITS.values()})
    fixed = [f for f in args.ARCHITECTURE if getattr(args, f) is not None]
    if fixed:
        raise ConfigError(f"--policy.{fixed[0]} changes the architecture and cannot be set with --policy.path")
    if overrides:  # in place: the model holds the same config object
        for name, value in overrides.items():
            setattr(policy.config, name, value)
        policy.config.validate()
        policy.apply_freezing()
    check_compatible(policy, data.features, data.fill_missing_cameras)
    return policy


@dataclass
class RunProcessors:
    """A run's processors: what turns a loader batch into the model's (`train`), and what is saved beside the
    weights (`saved`: objects with `.save(directory)`)."""

    train: Callable[[dict[str, Any]], dict[str, Any]]
    saved: tuple

    @classmethod
    def pair(cls, pre: Pipeline, post: Pipeline) -> RunProcessors:
        return cls(pre, (pre, post))

    @classmethod
    def load(cls, directory: Path, device: str) -> RunProcessors:
        """A resumed run's processors, from its checkpoint (one robot's pair, or every embodiment's)."""
        every = EmbodimentProcessors.load(directory, device)
        if every is None:
            return cls.pair(*load_processors(directory, device=device))
        return cls(MixedPreprocessor([pre for pre, _ in every.pairs.values()]), (every,))


def build_processors(policy: SmolVLAPolicy, tokenizer: TaskTokenizer, data: TrainData, device: str) -> RunProcessors:
    """Normalization from the data, the given tokenizer; with several robots, a pair per embodiment."""
    vocab = policy.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's {vocab} embeddings")
    if not data.mixed:  # a robot lacking some of the policy's cameras is served without them (they are filled)
        robot = data.embodiments[0].robot() if data.fill_missing_cameras else None
        pre, post = make_processors(
            policy.config, data.stats, tokenizer, rename_map=data.rename_map, device=device, robot=robot
        )
        return RunProcessors.pair(pre, post)
    pairs = {
        e.name: make_processors(
            policy.config, e.stats, tokenizer, rename_map=e.rename_map, device=device, robot=e.robot()
        )
        for e in data.embodiments
    }
    every = EmbodimentProcessors(pairs, {e.name: e.summary() for e in data.embodiments})
    return RunProcessors(MixedPreprocessor([pre for pre, _ in pairs.values()]), (every,))
