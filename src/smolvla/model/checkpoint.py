"""Strict loading and atomic saving of LeRobot-style `pretrained_model/` directories.

LeRobot loads SmolVLA weights with strict=False and ignores what does not fit, so a checkpoint from another
architecture "loads" and then computes garbage. Here every missing, unexpected or mis-shaped tensor is an error that
lists the keys. Two LeRobot artefacts are understood rather than rejected: keys saved from a `torch.compile`d model
(`model._orig_mod.`) and the normalization buffers older LeRobot versions kept inside the policy
(`normalize_inputs.*`, `normalize_targets.*`, `unnormalize_outputs.*`), which are returned as statistics instead of
weights, since normalization is a processor's job (`split_legacy_stats` returns them for
`smolvla.processors.stats_from_legacy`).

`pretrained_dir` is the one place that decides which directory a user's path means: a run's checkpoint step
(`checkpoints/000100/`) and its `pretrained_model/` are both accepted wherever a policy is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from smolvla import hub
from smolvla.adapters import ADAPTER_WEIGHTS
from smolvla.atomic import atomic_directory
from smolvla.errors import CheckpointError
from smolvla.model.backbone import BACKBONE_PRESETS, HUB_BACKBONES, Backbone
from smolvla.model.config import CONFIG_NAME

WEIGHTS_NAME = "model.safetensors"
PRETRAINED_MODEL = "pretrained_model"  # a checkpoint step's policy directory (LeRobot's name)
VLM_SUBDIR = "vlm"  # a custom backbone's config and tokenizer, saved inside the checkpoint
BACKBONE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
LEGACY_NORM_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def _list(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def pretrained_dir(path: str | Path) -> Path:
    """The `pretrained_model/` directory `path` means: a local directory, or a Hugging Face repo id resolved through
    the cache (`smolvla.hub`); itself, or its `pretrained_model/` child when it is a checkpoint step. Whether it
    holds a policy is the reader's check."""
    try:
        directory = hub.resolve(path)
    except hub.HubError as e:
        raise CheckpointError(str(e)) from e
    nested = directory / PRETRAINED_MODEL
    return nested if not (directory / CONFIG_NAME).is_file() and nested.is_dir() else directory


def weights_sha256(directory: Path) -> str:
    """sha256 of a pretrained_model directory's model.safetensors (an adapter checkpoint's adapter weights): which
    weights a pair cache was solved with, an export was made from, or a server is serving."""
    digest = hashlib.sha256()
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file() and (Path(directory) / ADAPTER_WEIGHTS).is_file():
        weights = Path(directory) / ADAPTER_WEIGHTS
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"no weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e


def split_legacy_stats(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Separate old LeRobot normalization buffers from the weights; undo torch.compile's key prefix."""
    weights, stats = {}, {}
    for key, value in state_dict.items():
        key = key.replace("._orig_mod.", ".").removeprefix("_orig_mod.")
        (stats if key.startswith(LEGACY_NORM_PREFIXES) else weights)[key] = value
    return weights, stats


def load_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Copy `state_dict` into `module`, refusing any key or shape mismatch (all of them reported at once)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_list(unexpected)}")
    if mis_shaped:
        problems.append(f"mis-shaped {len(mis_shaped)}: {_list(mis_shaped)}")
    if problems:
        raise CheckpointError(f"{source} does not match the configured architecture; " + "; ".join(problems))
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state_dict[key])


def write_pretrained(
    path: Path,
    config_files: dict[str, dict[str, Any]],
    tensors: dict[str, Tensor],
    backbone: Backbone,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write config.json + model.safetensors (`format: pt`, as LeRobot) atomically, plus whatever `extra` writes.
    `config_files` is `SmolVLAConfig.to_files()`: config.json and, when set, the smolvla-only fields beside it.

    A backbone named by a hub id (SmolVLM2, or one resolved from the Hugging Face cache) keeps that id, as LeRobot's
    checkpoints do; any other (the tiny preset, a custom directory) is saved in `vlm/`, referenced relatively, with
    its config and a tokenizer: the backbone's own, else the checkpoint's (written by `extra`, e.g. a tokenizer
    learnt from the instructions), so LeRobot can load `vlm/` too (docs/lerobot.md).
    """
    config = config_files[CONFIG_NAME]
    name = config["vlm_model_name"]
    hub_preset = name in HUB_BACKBONES and backbone.directory is None and BACKBONE_PRESETS[name][0] == backbone.config
    self_contained = not (backbone.repo_id == name or hub_preset)
    config = {**config, "vlm_model_name": VLM_SUBDIR} if self_contained else config

    def write(tmp: Path) -> None:
        for file, content in {**config_files, CONFIG_NAME: config}.items():
            (tmp / file).write_text(json.dumps(content, indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if extra is not None:
            extra(tmp)
        if self_contained:
            (tmp / VLM_SUBDIR).mkdir()
            has_own = backbone.directory is not None and (backbone.directory / BACKBONE_FILES[0]).is_file()
            # The checkpoint's own (learnt) tokenizer stands in only when image special tokens are off: its appended
            # image tokens have other ids than the preset's, which the model uses when they are on.
            borrowed = None if config.get("add_image_special_tokens") else tmp
            source = backbone.directory if has_own else borrowed
            for file in BACKBONE_FILES:
                if source is not None and (source / file).is_file():
                    shutil.copyfile(source / file, tmp / VLM_SUBDIR / file)
            (tmp / VLM_SUBDIR / CONFIG_NAME).write_text(json.dumps(backbone.config, indent=2) + "\n")

    atomic_directory(Path(path), write)
