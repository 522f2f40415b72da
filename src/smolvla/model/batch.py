"""The model-space batch contract: what `SmolVLAPolicy` accepts, checked once, turned into a `Prefix` and targets.

A batch uses LeRobot's keys (`smolvla.keys`): `observation.state` (B, d) normalized, `observation.images.<cam>`
(B, 3, H, W) float in [0, 1], optional `<cam>_padding_mask` (B,) bool, language tokens / attention mask (B, L), and
for training `action` (B, chunk, d_action) normalized with optional `action_is_pad` (B, chunk). A stacked
observation history (B, T, ...) uses its newest step, as LeRobot's n_obs_steps=1 policies do. Every violation is
one `BatchError` naming the key and what was expected, before anything reaches the network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from smolvla.errors import BatchError
from smolvla.keys import (
    ACTION_DIM_IS_PAD,
    ACTION_IS_PAD,
    ACTION_KEY,
    EMPTY_CAMERA_PREFIX,
    LANG_MASK,
    LANG_TOKENS,
    PADDING_MASK_SUFFIX,
    STATE_KEY,
    TASK_KEY,
)
from smolvla.model.config import SmolVLAConfig
from smolvla.model.flow_matching import Prefix
from smolvla.model.images import resize_with_pad
from smolvla.model.rectified_flow import ActionPrefix


def _check_finite(name: str, value: Tensor) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise BatchError(f"{name} contains NaN or Inf values")


def _tensor(batch: dict[str, Any], key: str, what: str, device: torch.device) -> Tensor:
    if key not in batch:
        raise BatchError(f"batch has no {key!r} ({what}); batch keys: {sorted(batch)}")
    value = batch[key]
    if not isinstance(value, Tensor):
        raise BatchError(f"{key!r} must be a torch.Tensor, got {type(value).__name__}")
    return value.to(device)


def _last_step(value: Tensor, key: str, per_step_ndim: int) -> Tensor:
    if value.ndim == per_step_ndim + 2:
        return value[:, -1]
    if value.ndim != per_step_ndim + 1:
        raise BatchError(f"{key!r} must have {per_step_ndim + 1} dims (batch first), got shape {tuple(value.shape)}")
    return value


def prepare_images(
    batch: dict[str, Any], cfg: SmolVLAConfig, batch_size: int, device: torch.device
) -> tuple[list[Tensor], list[Tensor]]:
    """The cameras of `batch` (float in [0, 1]) as the prefix embeds them, one (B, 3, H, W) tensor in [-1, 1] per
    camera of the config, and each camera's per-sample validity."""
    images, masks = [], []
    absent_empty = 0
    for key in cfg.image_features:
        if key not in batch:
            if key.startswith(EMPTY_CAMERA_PREFIX):
                absent_empty += 1
                continue
            cams = [k for k in cfg.image_features if not k.startswith(EMPTY_CAMERA_PREFIX)]
            raise BatchError(f"camera {key!r} is missing from the batch; the policy expects cameras {cams}")
        img = _last_step(_tensor(batch, key, "camera image", device), key, 3)
        if not img.is_floating_point():
            raise BatchError(f"camera {key!r} must be float in [0, 1], got {img.dtype} (divide uint8 by 255)")
        if img.shape[0] != batch_size or img.shape[1] != 3:
            raise BatchError(f"camera {key!r} must be ({batch_size}, 3, H, W), got {tuple(img.shape)}")
        _check_finite(key, img)
        if cfg.resize_imgs_with_padding is not None:
            img = resize_with_pad(img, *cfg.resize_imgs_with_padding, pad_value=0.0)
        images.append(img * 2.0 - 1.0)
        mask_key = key + PADDING_MASK_SUFFIX
        if mask_key in batch:
            mask = _tensor(batch, mask_key, "per-sample camera validity", device)
            if mask.shape != (batch_size,):
                raise BatchError(f"{mask_key!r} must have shape ({batch_size},), got {tuple(mask.shape)}")
            masks.append(mask.bool())
        else:
            masks.append(torch.ones(batch_size, dtype=torch.bool, device=device))
    for _ in range(absent_empty):  # placeholder cameras: constant -1 images that nothing attends to
        images.append(torch.full_like(images[-1], -1.0))
        masks.append(torch.zeros(batch_size, dtype=torch.bool, device=device))
    return images, masks


def prepare_observation(batch: dict[str, Any], cfg: SmolVLAConfig, vocab_size: int, device: torch.device) -> Prefix:
    """Validate an observation batch and turn it into model space: images resized and in [-1, 1], state padded."""
    if not isinstance(batch, dict):
        raise BatchError(f"batch must be a dict of tensors, got {type(batch).__name__}")
    state = _last_step(_tensor(batch, STATE_KEY, "robot state", device), STATE_KEY, 1)
    if state.shape[-1] not in (cfg.state_dim, cfg.max_state_dim):
        raise BatchError(
            f"{STATE_KEY!r} has dim {state.shape[-1]}, expected {cfg.state_dim} (config) or "
            f"{cfg.max_state_dim} (already padded)"
        )
    _check_finite(STATE_KEY, state)
    batch_size = state.shape[0]
    if LANG_TOKENS not in batch and TASK_KEY in batch:
        raise BatchError("batch has a 'task' string but no language tokens: run the language processor first")
    tokens = _tensor(batch, LANG_TOKENS, "language token ids", device)
    lang_mask = _tensor(batch, LANG_MASK, "language attention mask", device)
    if tokens.ndim != 2 or tokens.shape[0] != batch_size or lang_mask.shape != tokens.shape:
        raise BatchError(
            f"language tokens {tuple(tokens.shape)} and mask {tuple(lang_mask.shape)} must both be ({batch_size}, L)"
        )
    if tokens.is_floating_point():
        raise BatchError(f"{LANG_TOKENS!r} must be integer token ids, got {tokens.dtype}")
    if tokens.shape[1] > cfg.tokenizer_max_length:
        raise BatchError(
            f"language has {tokens.shape[1]} tokens, longer than tokenizer_max_length={cfg.tokenizer_max_length}"
        )
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise BatchError(f"language token ids must be in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    images, image_masks = prepare_images(batch, cfg, batch_size, device)
    padded_state = torch.zeros(batch_size, cfg.max_state_dim, dtype=torch.float32, device=device)
    padded_state[:, : state.shape[1]] = state
    return Prefix(images, image_masks, tokens.long(), lang_mask.bool(), padded_state)


def prepare_actions(batch: dict[str, Any], cfg: SmolVLAConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """Target actions padded to max_action_dim (B, chunk, max_action_dim) and which of their (step, dim) elements the
    loss counts (B, chunk, action_dim) float: not `action_is_pad` steps (past an episode's end), not
    `action_dim_is_pad` dims (a narrower robot's zero padding in a mixed-embodiment batch)."""
    actions = _tensor(batch, ACTION_KEY, "target action chunk", device)
    widths = (cfg.action_dim, cfg.max_action_dim)
    expected = (actions.shape[0], cfg.chunk_size, cfg.action_dim)
    if actions.ndim != 3 or actions.shape[1] != cfg.chunk_size or actions.shape[2] not in widths:
        raise BatchError(
            f"{ACTION_KEY!r} must be (B, chunk_size, action_dim) = {expected} or padded to max_action_dim "
            f"{cfg.max_action_dim}, got {tuple(actions.shape)}"
        )
    _check_finite(ACTION_KEY, actions)
    padded = torch.zeros(*expected[:2], cfg.max_action_dim, dtype=torch.float32, device=device)
    padded[..., : actions.shape[2]] = actions
    valid = torch.ones(expected, device=device)
    step_pad = _mask(batch, ACTION_IS_PAD, expected[:2], device)
    if step_pad is not None:
        valid = valid * (~step_pad).float()[:, :, None]
    dim_pad = _mask(batch, ACTION_DIM_IS_PAD, (expected[0], expected[2]), device)
    if dim_pad is not None:
        valid = valid * (~dim_pad).float()[:, None, :]
    return padded, valid


def _mask(batch: dict[str, Any], key: str, shape: tuple[int, ...], device: torch.device) -> Tensor | None:
    value = batch.get(key)
    if value is None:
        return None
    if tuple(value.shape) != shape:
        raise BatchError(f"{key!r} must be {shape}, got {tuple(value.shape)}")
    return value.to(device).bool()


def check_prefix(prefix: ActionPrefix, config: SmolVLAConfig, noise_shape: tuple[int, ...]) -> None:
    """Given chunk steps (training-time RTC) only for a policy trained with them, and no more than it was."""
    if not config.rtc_training_max_delay:
        raise BatchError("this policy was not trained for training-time real-time chunking (rtc_training_max_delay "
                         "is 0): give no action prefix, or use guided RTC (inpainting)")  # fmt: skip
    check_shape("action prefix actions", prefix.actions, noise_shape)
    check_shape("action prefix mask", prefix.mask, noise_shape[:2])
    given = int(prefix.mask.sum(dim=1).max()) if prefix.mask.numel() else 0
    if given > config.rtc_training_max_delay:
        raise BatchError(f"{given} given chunk steps: this policy was trained with at most "
                         f"{config.rtc_training_max_delay} (rtc_training_max_delay)")  # fmt: skip


def check_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
    """A caller-supplied tensor (noise, times) must have exactly the shape the model will use."""
    if tuple(value.shape) != tuple(shape):
        raise BatchError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
