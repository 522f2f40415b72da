"""Training checkpoints in LeRobot's layout, written so a kill at any instant leaves a usable run directory.

    <output_dir>/checkpoints/<step:06d>/pretrained_model/  config.json, model.safetensors, processors, train_config.json
    <output_dir>/checkpoints/<step:06d>/training_state/    training_step.json, optimizer_state.pt,
                                                           scheduler_state.json, rng_state.pt[, raw_model.safetensors]
    <output_dir>/checkpoints/last -> <step:06d>

Each step directory is built under a temporary name and renamed into place; `last` is a symlink swapped atomically
(`os.replace`) only after that. Older step directories beyond `keep_last` are removed last, so a crash between those
moments leaves an extra checkpoint, never a missing or half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from smolvla.atomic import atomic_directory
from smolvla.errors import CheckpointError
from smolvla.model.checkpoint import PRETRAINED_MODEL
from smolvla.train.ema import EMA

CHECKPOINTS_DIR = "checkpoints"
LAST = "last"
TRAINING_STATE = "training_state"
TRAIN_CONFIG = "train_config.json"
STEP_FILE = "training_step.json"
OPTIMIZER_FILE = "optimizer_state.pt"
SCHEDULER_FILE = "scheduler_state.json"
RNG_FILE = "rng_state.pt"
RAW_MODEL_FILE = "raw_model.safetensors"  # the non-averaged weights, when the policy saved is an EMA


def step_name(step: int) -> str:
    return f"{step:06d}"


def checkpoints_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def last_checkpoint(output_dir: Path) -> Path:
    """The directory `checkpoints/last` points to, or a CheckpointError saying what is missing."""
    last = checkpoints_dir(output_dir) / LAST
    if not last.exists():
        raise CheckpointError(
            f"--resume=true but {output_dir} has no {CHECKPOINTS_DIR}/{LAST} checkpoint to resume from "
            "(drop --resume to start a new run)"
        )
    target = last.resolve()
    for part in (PRETRAINED_MODEL, TRAINING_STATE):
        if not (target / part).is_dir():
            raise CheckpointError(f"checkpoint {target} has no {part}/ directory")
    return target


def read_train_config(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / PRETRAINED_MODEL / TRAIN_CONFIG
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the run's settings from {path}: {e}") from e


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    write_pretrained: Any,
    train_config: dict[str, Any],
    training_state: dict[str, Any],
    raw_weights: dict[str, torch.Tensor] | None = None,
    keep_last: int = 0,
    protected: frozenset[str] = frozenset(),
) -> Path:
    """Write checkpoint `step` atomically, point `last` at it, then prune to `keep_last` (0 keeps all; `protected`
    step directories, e.g. `best`'s, are never pruned).

    `write_pretrained(directory)` writes the policy (weights + processors) into a fresh directory;
    `training_state` holds `optimizer`, `scheduler`, `rng` and plain-JSON `progress` entries.
    """
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / step_name(step)

    def write(tmp: Path) -> None:
        write_pretrained(tmp / PRETRAINED_MODEL)
        (tmp / PRETRAINED_MODEL / TRAIN_CONFIG).write_text(json.dumps(train_config, indent=2) + "\n")
        state_dir = tmp / TRAINING_STATE
        state_dir.mkdir()
        (state_dir / STEP_FILE).write_text(json.dumps({"step": step, **training_state["progress"]}, indent=2) + "\n")
        torch.save(training_state["optimizer"], state_dir / OPTIMIZER_FILE)
        (state_dir / SCHEDULER_FILE).write_text(json.dumps(training_state["scheduler"]) + "\n")
        torch.save(training_state["rng"], state_dir / RNG_FILE)
        if raw_weights is not None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in raw_weights.items()}, str(state_dir / RAW_MODEL_FILE)
            )

    atomic_directory(target, write)
    point_link(root, LAST, target.name)
    if keep_last > 0:
        steps = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit())
        for old in (p for p in steps[:-keep_last] if p.name not in protected):
            shutil.rmtree(old, ignore_errors=True)
    return target


def point_link(root: Path, name: str, target: str) -> None:
    """Make `root/name` a symlink to `target` atomically (a fresh link renamed over the old one)."""
    link = root / f".{name}.tmp"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
    os.replace(link, root / name)


def has_checkpoints(output_dir: Path) -> bool:
    root = checkpoints_dir(output_dir)
    return root.is_dir() and any(p.name == LAST or p.name.isdigit() for p in root.iterdir())


def remove_partial(output_dir: Path) -> None:
    """Delete what a run killed mid-save left behind: hidden temporary checkpoint directories."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for leftover in root.glob(".*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote under training_state/, with clear errors for missing or corrupt files."""
    state_dir = checkpoint / TRAINING_STATE
    try:
        progress = json.loads((state_dir / STEP_FILE).read_text())
        state = {
            "progress": progress,
            "optimizer": torch.load(state_dir / OPTIMIZER_FILE, weights_only=True),
            "scheduler": json.loads((state_dir / SCHEDULER_FILE).read_text()),
            "rng": torch.load(state_dir / RNG_FILE, weights_only=True),
        }
        if (state_dir / RAW_MODEL_FILE).is_file():
            state["raw_weights"] = load_file(str(state_dir / RAW_MODEL_FILE))
    except Exception as e:
        raise CheckpointError(f"cannot read the training state in {state_dir}: {type(e).__name__}: {e}") from e
    return state


def restore_training_state(state: dict[str, Any], optimizer, scheduler, ema: EMA | None, where: Path) -> None:
    """Put a loaded training state back into the optimizer, scheduler, EMA and the global RNG."""
    try:
        if ema is not None:
            if "raw_weights" not in state:
                raise CheckpointError(f"{where} was saved without EMA, but this run uses --ema_decay")
            missing = sorted(set(ema.params) - set(state["raw_weights"]))
            if missing:
                raise CheckpointError(f"{where}: raw weights lack {missing[:5]}")
            ema.load(state["raw_weights"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"the training state in {where} does not fit this policy/optimizer: {e}") from e
    set_rng_state(state["rng"])
