"""`SmolVLAPolicy`: the user-facing policy over model-space batches (LeRobot 0.6 semantics).

A batch uses LeRobot's keys: `observation.state` (B, d) normalized, `observation.images.<cam>` (B, 3, H, W) float in
[0, 1], optional `observation.images.<cam>_padding_mask` (B,) bool, `observation.language.tokens` /
`observation.language.attention_mask` (B, L), and for training `action` (B, chunk, d_action) normalized with
optional `action_is_pad` (B, chunk). Normalization and tokenization are processors saved beside the checkpoint;
this class validates the batch, pads state/actions to the model's widths, prepares the cameras, and crops predicted
actions back to the robot's action dimension.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from smolvla.errors import BatchError, CheckpointError, ConfigError
from smolvla.model.backbone import BACKBONE_PRESETS, SMOLVLM2_500M, TINY_BACKBONE, Backbone, resolve_backbone
from smolvla.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_directory,
    load_strict,
    read_weights,
    split_legacy_stats,
)
from smolvla.model.config import ACTION_KEY, EMPTY_CAMERA_PREFIX, STATE_KEY, SmolVLAConfig
from smolvla.model.flow_matching import Prefix, VLAFlowMatching
from smolvla.model.images import resize_with_pad
from smolvla.model.rectified_flow import Inpainting

if TYPE_CHECKING:
    from smolvla.processors.pipeline import Pipeline

LANG_TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"
ACTION_IS_PAD = "action_is_pad"
VLM_SUBDIR = "vlm"


def _preset_configs() -> dict[str, dict[str, Any]]:
    base_features = {
        "input_features": {
            STATE_KEY: {"type": "STATE", "shape": [6]},
            **{f"observation.images.camera{i}": {"type": "VISUAL", "shape": [3, 256, 256]} for i in (1, 2, 3)},
        },
        "output_features": {ACTION_KEY: {"type": "ACTION", "shape": [6]}},
    }
    return {
        # LeRobot's SmolVLA defaults on SmolVLM2-500M: the architecture of `lerobot/smolvla_base`.
        # Field values as in that checkpoint's config.json (0 means "unset" for expert layers and prefix length).
        "smolvla_base": {
            **base_features,
            "vlm_model_name": SMOLVLM2_500M,
            "pad_language_to": "max_length",
            "num_expert_layers": 0,
            "prefix_length": 0,
            "load_vlm_weights": True,
        },
        # A few-hundred-thousand-parameter trunk (plus SmolVLM2's token table) for CPU tests and the demo.
        "tiny": {
            "input_features": {
                STATE_KEY: {"type": "STATE", "shape": [6]},
                "observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
            },
            "output_features": {ACTION_KEY: {"type": "ACTION", "shape": [6]}},
            "vlm_model_name": TINY_BACKBONE,
            "chunk_size": 10,
            "n_action_steps": 10,
            "resize_imgs_with_padding": [64, 64],
            "num_vlm_layers": 4,
        },
    }


def preset_config(name: str) -> dict[str, Any]:
    """The config fields of a built-in architecture ("smolvla_base", "tiny")."""
    presets = _preset_configs()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(presets)}")
    return presets[name]


def _check_finite(name: str, value: Tensor) -> None:
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise BatchError(f"{name} contains NaN or Inf values")


class SmolVLAPolicy(nn.Module):
    """SmolVLA policy: `compute_loss` for training, `predict_chunk` / `select_action` for control."""

    def __init__(self, config: SmolVLAConfig, backbone: Backbone | None = None):
        super().__init__()
        if backbone is None:
            backbone = resolve_backbone(config.vlm_model_name, need_special_ids=config.add_image_special_tokens)
        if config.state_dim is None:
            raise ConfigError(f"input_features must include {STATE_KEY!r}")
        if not config.image_features:
            raise ConfigError("input_features must include at least one VISUAL camera feature")
        self.config = config
        self.backbone = backbone
        self.model = VLAFlowMatching(config, backbone)
        self.legacy_stats: dict[str, Tensor] = {}
        self.apply_freezing()
        self.reset()

    # --- construction ---
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SmolVLAPolicy:
        """An untrained policy of a built-in architecture ("smolvla_base" full size, "tiny"), fields overridable."""
        return cls(SmolVLAConfig.from_dict({**preset_config(name), **overrides}))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        vlm_config: Backbone | dict[str, Any] | str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> SmolVLAPolicy:
        """Load a LeRobot-style `pretrained_model/` directory (config.json + model.safetensors), strictly.

        `vlm_config` overrides where the backbone architecture comes from (a SmolVLM config dict or directory).
        """
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() and (path / "pretrained_model" / CONFIG_NAME).is_file():
            path = path / "pretrained_model"
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} is not a pretrained_model directory: no {CONFIG_NAME}")
        config = SmolVLAConfig.from_json(path / CONFIG_NAME)
        backbone = resolve_backbone(
            config.vlm_model_name,
            checkpoint_dir=path,
            override=vlm_config,
            need_special_ids=config.add_image_special_tokens,
        )
        weights, stats = split_legacy_stats(read_weights(path / WEIGHTS_NAME))
        from transformers.initialization import no_init_weights

        with no_init_weights():  # every tensor is overwritten below; skip the random init of 450M parameters
            policy = cls(config, backbone)
        load_strict(policy, weights, source=str(path / WEIGHTS_NAME))
        policy.legacy_stats = stats
        return policy.to(device) if device is not None else policy

    def save_pretrained(self, path: str | Path, processors: tuple[Pipeline, Pipeline] | None = None) -> None:
        """Write config.json + model.safetensors (LeRobot layout, `format: pt`) atomically.

        A backbone that is not a built-in preset is saved in `vlm/` and referenced relatively, so the checkpoint
        loads offline on any machine. `processors` (pre, post), e.g. from `smolvla.processors.make_processors`, are
        saved into the same directory (`policy_preprocessor.json`, ..., tokenizer files); reload them with
        `smolvla.processors.load_processors(path)`.
        """
        from safetensors.torch import save_file

        config = self.config.to_dict()
        preset = BACKBONE_PRESETS.get(self.config.vlm_model_name)
        self_contained = self.backbone.directory is not None or preset is None or preset[0] != self.backbone.config
        if self_contained:
            config["vlm_model_name"] = VLM_SUBDIR
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            if self_contained:
                (tmp / VLM_SUBDIR).mkdir()
                source = self.backbone.directory
                for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    if source is not None and (source / name).is_file():
                        shutil.copyfile(source / name, tmp / VLM_SUBDIR / name)
                (tmp / VLM_SUBDIR / CONFIG_NAME).write_text(json.dumps(self.backbone.config, indent=2) + "\n")
            for pipeline in processors or ():
                pipeline.save(tmp)

        atomic_directory(Path(path), write)

    def apply_freezing(self) -> None:
        """LeRobot's presets: train_expert_only freezes the backbone, freeze_vision_encoder the SigLIP tower."""
        vlm = self.model.vlm_with_expert
        cfg = self.config
        for p in vlm.vlm.parameters():
            p.requires_grad_(not cfg.train_expert_only)
        if cfg.freeze_vision_encoder:
            vlm.vlm.model.vision_model.requires_grad_(False)
        unused = tuple(vlm.unused_backbone_parameters())
        for name, p in vlm.named_parameters():
            if name.startswith(unused):
                p.requires_grad_(False)
        self.model.state_proj.requires_grad_(cfg.train_state_proj)

    # --- batch preparation ---
    @property
    def device(self) -> torch.device:
        return self.model.state_proj.weight.device

    def _tensor(self, batch: dict[str, Any], key: str, what: str) -> Tensor:
        if key not in batch:
            raise BatchError(f"batch has no {key!r} ({what}); batch keys: {sorted(batch)}")
        value = batch[key]
        if not isinstance(value, Tensor):
            raise BatchError(f"{key!r} must be a torch.Tensor, got {type(value).__name__}")
        return value.to(self.device)

    def _last_step(self, value: Tensor, key: str, per_step_ndim: int) -> Tensor:
        # A stacked observation history (B, T, ...) uses its newest step, as LeRobot's n_obs_steps=1 policies do.
        if value.ndim == per_step_ndim + 2:
            return value[:, -1]
        if value.ndim != per_step_ndim + 1:
            raise BatchError(
                f"{key!r} must have {per_step_ndim + 1} dims (batch first), got shape {tuple(value.shape)}"
            )
        return value

    def _images(self, batch: dict[str, Any], batch_size: int) -> tuple[list[Tensor], list[Tensor]]:
        cfg = self.config
        images, masks = [], []
        absent_empty = 0
        for key in cfg.image_features:
            if key not in batch:
                if key.startswith(EMPTY_CAMERA_PREFIX):
                    absent_empty += 1
                    continue
                cams = [k for k in cfg.image_features if not k.startswith(EMPTY_CAMERA_PREFIX)]
                raise BatchError(f"camera {key!r} is missing from the batch; the policy expects cameras {cams}")
            img = self._last_step(self._tensor(batch, key, "camera image"), key, 3)
            if not img.is_floating_point():
                raise BatchError(f"camera {key!r} must be float in [0, 1], got {img.dtype} (divide uint8 by 255)")
            if img.shape[0] != batch_size or img.shape[1] != 3:
                raise BatchError(f"camera {key!r} must be ({batch_size}, 3, H, W), got {tuple(img.shape)}")
            _check_finite(key, img)
            if cfg.resize_imgs_with_padding is not None:
                img = resize_with_pad(img, *cfg.resize_imgs_with_padding, pad_value=0.0)
            images.append(img * 2.0 - 1.0)
            mask_key = f"{key}_padding_mask"
            if mask_key in batch:
                mask = self._tensor(batch, mask_key, "per-sample camera validity")
                if mask.shape != (batch_size,):
                    raise BatchError(f"{mask_key!r} must have shape ({batch_size},), got {tuple(mask.shape)}")
                masks.append(mask.bool())
            else:
                masks.append(torch.ones(batch_size, dtype=torch.bool, device=self.device))
        for _ in range(absent_empty):  # placeholder cameras: constant -1 images that nothing attends to
            images.append(torch.full_like(images[-1], -1.0))
            masks.append(torch.zeros(batch_size, dtype=torch.bool, device=self.device))
        return images, masks

    def prepare_observation(self, batch: dict[str, Any]) -> Prefix:
        """Validate an observation batch and turn it into model space (see module docstring)."""
        cfg = self.config
        if not isinstance(batch, dict):
            raise BatchError(f"batch must be a dict of tensors, got {type(batch).__name__}")
        state = self._last_step(self._tensor(batch, STATE_KEY, "robot state"), STATE_KEY, 1)
        if state.shape[-1] not in (cfg.state_dim, cfg.max_state_dim):
            raise BatchError(
                f"{STATE_KEY!r} has dim {state.shape[-1]}, expected {cfg.state_dim} (config) or "
                f"{cfg.max_state_dim} (already padded)"
            )
        _check_finite(STATE_KEY, state)
        batch_size = state.shape[0]
        if LANG_TOKENS not in batch and "task" in batch:
            raise BatchError("batch has a 'task' string but no language tokens: run the language processor first")
        tokens = self._tensor(batch, LANG_TOKENS, "language token ids")
        lang_mask = self._tensor(batch, LANG_MASK, "language attention mask")
        if tokens.ndim != 2 or tokens.shape[0] != batch_size or lang_mask.shape != tokens.shape:
            raise BatchError(
                f"language tokens {tuple(tokens.shape)} and mask {tuple(lang_mask.shape)} must both be "
                f"({batch_size}, L)"
            )
        if tokens.is_floating_point():
            raise BatchError(f"{LANG_TOKENS!r} must be integer token ids, got {tokens.dtype}")
        if tokens.shape[1] > cfg.tokenizer_max_length:
            raise BatchError(
                f"language has {tokens.shape[1]} tokens, longer than tokenizer_max_length={cfg.tokenizer_max_length}"
            )
        vocab = self.model.vlm_with_expert.text_model.embed_tokens.num_embeddings
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
            raise BatchError(f"language token ids must be in [0, {vocab}), got [{tokens.min()}, {tokens.max()}]")
        images, image_masks = self._images(batch, batch_size)
        padded_state = torch.zeros(batch_size, cfg.max_state_dim, dtype=torch.float32, device=self.device)
        padded_state[:, : state.shape[1]] = state
        return Prefix(images, image_masks, tokens.long(), lang_mask.bool(), padded_state)

    def prepare_actions(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Target actions padded to max_action_dim (B, chunk, max_action_dim) and the optional step padding."""
        cfg = self.config
        actions = self._tensor(batch, ACTION_KEY, "target action chunk")
        widths = (cfg.action_dim, cfg.max_action_dim)
        expected = (actions.shape[0], cfg.chunk_size, cfg.action_dim)
        if actions.ndim != 3 or actions.shape[1] != cfg.chunk_size or actions.shape[2] not in widths:
            raise BatchError(
                f"{ACTION_KEY!r} must be (B, chunk_size, action_dim) = {expected} or padded to max_action_dim "
                f"{cfg.max_action_dim}, got {tuple(actions.shape)}"
            )
        _check_finite(ACTION_KEY, actions)
        padded = torch.zeros(*expected[:2], cfg.max_action_dim, dtype=torch.float32, device=self.device)
        padded[..., : actions.shape[2]] = actions
        is_pad = batch.get(ACTION_IS_PAD)
        if is_pad is not None:
            is_pad = is_pad.to(self.device)
            if tuple(is_pad.shape) != expected[:2]:
                raise BatchError(f"{ACTION_IS_PAD!r} must be {expected[:2]}, got {tuple(is_pad.shape)}")
            is_pad = is_pad.bool()
        return padded, is_pad

    # --- training ---
    def compute_loss(
        self,
        batch: dict[str, Any],
        noise: Tensor | None = None,
        time: Tensor | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Flow-matching MSE over real action dims and non-padded steps: a scalar ("mean") or per sample ("none")."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        prefix = self.prepare_observation(batch)
        actions, is_pad = self.prepare_actions(batch)
        shape = actions.shape
        if noise is None:
            noise = torch.randn(shape, dtype=torch.float32, device=self.device)
        elif tuple(noise.shape) != tuple(shape):
            raise BatchError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
        if time is None:
            time = self.model.sample_time(shape[0], self.device)
        elif tuple(time.shape) != (shape[0],):
            raise BatchError(f"time must have shape ({shape[0]},), got {tuple(time.shape)}")
        losses = self.model.losses(prefix, actions, noise.to(self.device), time.to(self.device))["losses_raw"]
        return self.reduce_losses(losses, is_pad, reduction)

    def reduce_losses(self, losses: Tensor, is_pad: Tensor | None, reduction: str) -> Tensor:
        """Crop to the real action dims, drop padded steps, average over what remains (LeRobot 0.6.1's rule)."""
        dim = self.config.action_dim
        losses = losses[..., :dim]
        valid = torch.ones(losses.shape[:2], device=losses.device) if is_pad is None else (~is_pad).float()
        losses = losses * valid[..., None]
        if reduction == "none":
            return losses.sum(dim=(1, 2)) / (valid.sum(dim=1) * dim).clamp(min=1)
        return losses.sum() / (valid.sum() * dim).clamp(min=1)

    def forward(
        self, batch: dict[str, Any], noise: Tensor | None = None, time: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        """The training loss, so DDP / accelerate wrappers can call the module directly."""
        return self.compute_loss(batch, noise=noise, time=time, reduction=reduction)

    # --- inference ---
    @torch.no_grad()
    def predict_chunk(
        self, batch: dict[str, Any], noise: Tensor | None = None, num_steps: int | None = None,
        inpainting: Inpainting | None = None,
    ) -> Tensor:  # fmt: skip
        """Sample an action chunk (B, chunk_size, action_dim) in model (normalized) space; `inpainting` (real-time
        chunking) guides it towards actions still queued from the previous chunk (run under no_grad, not
        inference_mode: the guidance differentiates through the expert)."""
        cfg = self.config
        prefix = self.prepare_observation(batch)
        shape = (prefix.state.shape[0], cfg.chunk_size, cfg.max_action_dim)
        if noise is None:
            noise = torch.randn(shape, dtype=torch.float32, device=self.device)
        elif tuple(noise.shape) != shape:
            raise BatchError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        steps = cfg.num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        return self.model.sample(prefix, noise.to(self.device), steps, inpainting=inpainting)[..., : cfg.action_dim]

    def compile_inference(self, mode: str | None = None, whole_chunk: bool = False) -> SmolVLAPolicy:
        """Compile what inference repeats with `torch.compile`. By default the two functions separately — the
        prefix encoder (once per chunk) and the expert's velocity (once per denoising step) — which fuses the
        expert's many small ops and compiles in tens of seconds for any `num_steps`. `whole_chunk=True` compiles
        encoder and the unrolled Euler loop as one graph instead: no Python or guard checks between steps (what
        a small model's chunk is made of on a CPU; docs/benchmarks.md has the numbers), at the price of a compile
        several times longer per distinct `num_steps`. The first call per input shape compiles; a new language length
        recompiles once with dynamic shapes. Numerics match eager within float32 rounding, not bit for bit
        (parity is checked eagerly). Real-time-chunking (guided) sampling uses the per-function compile's pieces
        when present, else eager."""
        if whole_chunk:
            self.model.sample_chunk = torch.compile(self.model.sample_chunk, mode=mode)
        else:
            self.model.encode = torch.compile(self.model.encode, mode=mode)
            self.model.velocity = torch.compile(self.model.velocity, mode=mode)
        return self

    def reset(self) -> None:
        """Forget queued actions; call at every episode start."""
        self._queue: Tensor | None = None
        self._queue_pos = 0

    @property
    def will_predict(self) -> bool:
        """True when the next `select_action` computes a new chunk (the expensive call) rather than dequeuing."""
        return self._queue is None or self._queue_pos >= self.config.n_action_steps

    @torch.no_grad()
    def select_action(self, batch: dict[str, Any]) -> Tensor:
        """One action (B, action_dim) per call; a new chunk is predicted every n_action_steps calls."""
        if self.will_predict:
            self._queue = self.predict_chunk(batch)[:, : self.config.n_action_steps]
            self._queue_pos = 0
        action = self._queue[:, self._queue_pos]
        self._queue_pos += 1
        return action

    # --- introspection ---
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
