"""SmolVLA policy configuration, field for field LeRobot's `SmolVLAConfig` (0.6.x).

The JSON written by `to_dict` is the `config.json` of a LeRobot `pretrained_model/` directory, and any such file
loads through `from_dict`. Loading is strict: an unknown key is an error naming it, because a silently ignored key
(a typo, or a field from an incompatible policy type) makes a checkpoint behave differently from what its author
trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolvla.errors import ConfigError
from smolvla.keys import ACTION_KEY, EMPTY_CAMERA_PREFIX, STATE_KEY

FEATURE_TYPES = ("VISUAL", "STATE", "ACTION", "ENV", "LANGUAGE", "REWARD")
# Fields LeRobot's SmolVLAConfig (0.6.x) does not have, with their defaults. LeRobot parses config.json strictly, so
# these are written beside it, in EXTRA_CONFIG_NAME and only when set: LeRobot still loads such a checkpoint, as the
# plain SmolVLA it also is.
SMOLVLA_ONLY = {"rtc_training_max_delay": 0}
EXTRA_CONFIG_NAME = "smolvla_config.json"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class PolicyFeature:
    """One named input or output of the policy: its kind (LeRobot's `FeatureType`) and per-sample shape."""

    type: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.type not in FEATURE_TYPES:
            raise ConfigError(f"feature type {self.type!r} is not one of {FEATURE_TYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))


def _feature_dict(raw: dict[str, Any], where: str) -> dict[str, PolicyFeature]:
    out = {}
    for name, spec in raw.items():
        if isinstance(spec, PolicyFeature):
            out[name] = spec
            continue
        if not isinstance(spec, dict) or set(spec) != {"type", "shape"}:
            raise ConfigError(f"{where}[{name!r}] must be {{'type': ..., 'shape': [...]}}, got {spec!r}")
        out[name] = PolicyFeature(type=spec["type"], shape=tuple(spec["shape"]))
    return out


@dataclass
class SmolVLAConfig:
    # --- LeRobot PreTrainedConfig fields ---
    type: str = "smolvla"
    n_obs_steps: int = 1
    input_features: dict[str, PolicyFeature] = field(default_factory=dict)
    output_features: dict[str, PolicyFeature] = field(default_factory=dict)
    device: str | None = None
    use_amp: bool = False
    use_peft: bool = False
    push_to_hub: bool = True
    repo_id: str | None = None
    private: bool | None = None
    tags: list[str] | None = None
    license: str | None = None
    pretrained_path: str | None = None
    pretrained_revision: str | None = None
    # --- chunking / normalization ---
    chunk_size: int = 50
    n_action_steps: int = 50
    normalization_mapping: dict[str, str] = field(
        default_factory=lambda: {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    )
    max_state_dim: int = 32
    max_action_dim: int = 32
    # (width, height) of the padded square the cameras are resized into; None keeps images as given.
    resize_imgs_with_padding: tuple[int, int] | None = (512, 512)
    empty_cameras: int = 0
    adapt_to_pi_aloha: bool = False
    use_delta_joint_actions_aloha: bool = False
    tokenizer_max_length: int = 48
    num_steps: int = 10
    use_cache: bool = True
    # --- finetuning presets ---
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True
    # --- optimizer / scheduler presets ---
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-10
    optimizer_grad_clip_norm: float = 10
    scheduler_warmup_steps: int = 1_000
    scheduler_decay_steps: int = 30_000
    scheduler_decay_lr: float = 2.5e-6
    # --- architecture ---
    vlm_model_name: str = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
    # Kept for config compatibility only: backbone weights always come from the policy's model.safetensors.
    load_vlm_weights: bool = False
    add_image_special_tokens: bool = False
    attention_mode: str = "cross_attn"
    prefix_length: int = -1
    pad_language_to: str = "longest"
    num_expert_layers: int = -1
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    expert_width_multiplier: float = 0.75
    min_period: float = 4e-3
    max_period: float = 4.0
    rtc_config: dict[str, Any] | None = None
    compile_model: bool = False
    compile_mode: str = "max-autotune"
    # --- smolvla only (SMOLVLA_ONLY) ---
    # Training-time real-time chunking (arXiv 2512.05964; LeRobot's name for π0.5): half the training samples get
    # their first d chunk steps, d uniform in 1..this, as clean action tokens (flow time 0) left out of the loss, so
    # at inference the actions that execute during the delay can be given the same way (`ActionPrefix`); the other
    # half train the plain chunk (an episode's first, or a zero delay). 0 = off.
    rtc_training_max_delay: int = 0

    def __post_init__(self) -> None:
        self.input_features = _feature_dict(self.input_features, "input_features")
        self.output_features = _feature_dict(self.output_features, "output_features")
        if self.resize_imgs_with_padding is not None:
            self.resize_imgs_with_padding = tuple(int(v) for v in self.resize_imgs_with_padding)
        self.optimizer_betas = tuple(float(b) for b in self.optimizer_betas)
        self._add_empty_camera_features()
        self.validate()

    def _add_empty_camera_features(self) -> None:
        # LeRobot's validate_features adds one placeholder camera feature per empty camera; a config saved by
        # LeRobot already lists them, so add only the missing ones.
        for i in range(self.empty_cameras):
            key = f"{EMPTY_CAMERA_PREFIX}{i}"
            if key not in self.input_features:
                self.input_features[key] = PolicyFeature("VISUAL", (3, 480, 640))

    def validate(self) -> None:
        if self.type != "smolvla":
            raise ConfigError(f"config type is {self.type!r}, expected 'smolvla'")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ConfigError(
                f"n_action_steps ({self.n_action_steps}) must be between 1 and chunk_size ({self.chunk_size})"
            )
        if self.pad_language_to not in ("longest", "max_length"):
            raise ConfigError(f"pad_language_to is {self.pad_language_to!r}, expected 'longest' or 'max_length'")
        if self.attention_mode not in ("cross_attn", "self_attn"):
            raise ConfigError(f"attention_mode is {self.attention_mode!r}, expected 'cross_attn' or 'self_attn'")
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0 <= self.rtc_training_max_delay < self.chunk_size:
            raise ConfigError(
                f"rtc_training_max_delay ({self.rtc_training_max_delay}) must be in 0..chunk_size - 1 "
                f"({self.chunk_size - 1}): the given steps are a prefix of the chunk"
            )
        if not self.optimizer_lr > 0 or self.optimizer_weight_decay < 0 or not self.optimizer_grad_clip_norm > 0:
            raise ConfigError(
                f"need optimizer_lr > 0, optimizer_weight_decay >= 0 and optimizer_grad_clip_norm > 0, got "
                f"{self.optimizer_lr}, {self.optimizer_weight_decay}, {self.optimizer_grad_clip_norm}"
            )
        if min(self.scheduler_warmup_steps, self.scheduler_decay_steps) < 0 or self.scheduler_decay_lr < 0:
            raise ConfigError("scheduler_warmup_steps, scheduler_decay_steps and scheduler_decay_lr must be >= 0")
        if not 0 < self.min_period < self.max_period or not math.isfinite(self.max_period):
            raise ConfigError(f"need 0 < min_period < max_period, got {self.min_period}, {self.max_period}")
        if self.adapt_to_pi_aloha or self.use_delta_joint_actions_aloha:
            raise ConfigError(
                "adapt_to_pi_aloha / use_delta_joint_actions_aloha are not supported by smolvla: convert Aloha "
                "joints and grippers in a data processor instead"
            )
        state, action = self.input_features.get(STATE_KEY), self.output_features.get(ACTION_KEY)
        if state is not None and (len(state.shape) != 1 or state.shape[0] > self.max_state_dim):
            raise ConfigError(f"{STATE_KEY} shape {state.shape} must be (d,) with d <= max_state_dim")
        if action is not None and (len(action.shape) != 1 or action.shape[0] > self.max_action_dim):
            raise ConfigError(f"{ACTION_KEY} shape {action.shape} must be (d,) with d <= max_action_dim")
        for key, feat in self.image_features.items():
            if len(feat.shape) != 3 or feat.shape[0] != 3:
                raise ConfigError(f"camera {key!r} shape {feat.shape} must be (3, H, W)")

    # --- derived views ---
    @property
    def image_features(self) -> dict[str, PolicyFeature]:
        """Cameras in configuration order: the order of their token blocks in the prefix."""
        return {k: f for k, f in self.input_features.items() if f.type == "VISUAL"}

    @property
    def state_dim(self) -> int | None:
        feat = self.input_features.get(STATE_KEY)
        return feat.shape[0] if feat else None

    @property
    def action_dim(self) -> int:
        feat = self.output_features.get(ACTION_KEY)
        return feat.shape[0] if feat else self.max_action_dim

    # --- (de)serialisation ---
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SmolVLAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown SmolVLA config key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**raw)

    @classmethod
    def from_json(cls, path: str | Path) -> SmolVLAConfig:
        """A config.json, with the smolvla-only fields of the EXTRA_CONFIG_NAME beside it when there is one."""
        path = Path(path)
        raw = _read_object(path)
        extra = path.with_name(EXTRA_CONFIG_NAME)
        if extra.is_file():
            raw = {**raw, **_read_object(extra)}
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("input_features", "output_features"):
                value = {k: {"type": v.type, "shape": list(v.shape)} for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_files(self) -> dict[str, dict[str, Any]]:
        """{file name: JSON object} of a pretrained_model directory: config.json with LeRobot's fields only, and the
        smolvla-only fields that differ from their defaults in EXTRA_CONFIG_NAME."""
        lerobot = self.to_dict()
        extra = {k: lerobot.pop(k) for k in SMOLVLA_ONLY}
        extra = {k: v for k, v in extra.items() if v != SMOLVLA_ONLY[k]}
        return {CONFIG_NAME: lerobot, **({EXTRA_CONFIG_NAME: extra} if extra else {})}

    def replace(self, **changes: Any) -> SmolVLAConfig:
        """A copy with some fields changed; unknown field names are an error."""
        return self.from_dict({**self.to_dict(), **changes})


def _read_object(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read policy config {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"policy config {path} must hold a JSON object")
    return raw
