"""The policy and processors a run trains: from a preset (shaped by the dataset), a checkpoint, or a resumed run.

Fine-tuning keeps the checkpoint's tokenizer but normalizes with the new dataset's statistics, as LeRobot does.
Either way the dataset must provide what the policy reads: its state and action widths and every camera it was
trained with; a mismatch is an error naming both sides, not a crash deep inside the model.
"""

from __future__ import annotations

import json
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
from smolvla.processors import TaskTokenizer, Tokenize, load_processors, make_processors
from smolvla.processors.language import TOKENIZER_FILE
from smolvla.train.config import PolicyArgs
from smolvla.train.data import TrainData


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


def check_compatible(policy: SmolVLAPolicy, features: dict[str, dict[str, Any]]) -> None:
    """The dataset provides the policy's state and action widths and all of its (non-placeholder) cameras."""
    inputs, outputs = policy_features(features)
    cfg = policy.config
    dataset_cams = [k for k in inputs if k != STATE_KEY]
    missing = [k for k in cfg.image_features if not k.startswith(EMPTY_CAMERA_PREFIX) and k not in inputs]
    if missing:
        unused = [k for k in dataset_cams if k not in cfg.image_features]
        fix = json.dumps(dict(zip(unused, missing, strict=False)))
        raise DatasetError(
            f"the dataset lacks the policy's cameras {missing}; it has {sorted(dataset_cams)}: map the dataset's "
            f"names onto the policy's with --rename_map='{fix}' (check the pairing), or train a new policy"
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


def build_policy(args: PolicyArgs, data: TrainData) -> SmolVLAPolicy:
    """A new policy of `args.preset` shaped by the dataset, or the `args.path` checkpoint, with `args` overrides."""
    overrides = args.overrides()
    if args.path is None:
        inputs, outputs = policy_features(data.features)
        return SmolVLAPolicy.from_preset(args.preset, input_features=inputs, output_features=outputs, **overrides)
    policy = SmolVLAPolicy.from_pretrained(policy_dir(args.path))
    fixed = [f for f in args.ARCHITECTURE if getattr(args, f) is not None]
    if fixed:
        raise ConfigError(f"--policy.{fixed[0]} changes the architecture and cannot be set with --policy.path")
    if overrides:  # in place: the model holds the same config object
        for name, value in overrides.items():
            setattr(policy.config, name, value)
        policy.config.validate()
        policy.apply_freezing()
    check_compatible(policy, data.features)
    return policy


def build_processors(policy: SmolVLAPolicy, tokenizer: TaskTokenizer, data: TrainData, device: str):
    vocab = policy.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's {vocab} embeddings")
    return make_processors(policy.config, data.stats, tokenizer, rename_map=data.rename_map, device=device)
