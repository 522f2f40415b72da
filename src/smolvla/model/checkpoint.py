"""Strict loading and atomic saving of LeRobot-style `pretrained_model/` directories.

LeRobot loads SmolVLA weights with strict=False and ignores what does not fit, so a checkpoint from another
architecture "loads" and then computes garbage. Here every missing, unexpected or mis-shaped tensor is an error that
lists the keys. Two LeRobot artefacts are understood rather than rejected: keys saved from a `torch.compile`d model
(`model._orig_mod.`) and the normalization buffers older LeRobot versions kept inside the policy
(`normalize_inputs.*`, `normalize_targets.*`, `unnormalize_outputs.*`), which are returned as statistics instead of
weights, since normalization is a processor's job.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from smolvla.atomic import atomic_directory
from smolvla.errors import CheckpointError

__all__ = ["atomic_directory", "load_strict", "read_weights", "split_legacy_stats"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_NORM_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def _list(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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
