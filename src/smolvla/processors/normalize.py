"""Normalization of state/action by dataset statistics, and its inverse on whole action chunks.

LeRobot normalizes with per-feature statistics chosen by feature type (`norm_map`: VISUAL → IDENTITY, STATE and
ACTION → MEAN_STD for SmolVLA). Two rules here differ on purpose from a silent pass-through:

- a feature that needs statistics but has none is an error when the step is built (LeRobot #4415: stats saved under
  another key prefix were skipped and the policy ran on raw values);
- an input wider than its statistics (state/action already zero-padded to `max_state_dim`) is normalized with the
  statistics extended by mean 0 / std 1 (min -1 / max 1), so padded zeros stay zeros whichever order pad and
  normalize run in; the unnormalizer crops a padded chunk back to the robot's width in the same call.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from smolvla.errors import ConfigError
from smolvla.processors.pipeline import Batch, ProcessorStep

# Range modes map [low, high] to [-1, 1]; QUANTILES variants clip nothing, they only pick robust bounds.
RANGE_FIELDS = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}
REQUIRED = {"IDENTITY": (), "MEAN_STD": ("mean", "std"), **RANGE_FIELDS}
MODES = tuple(REQUIRED)
PAD_VALUE = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "q01": -1.0, "q99": 1.0, "q10": -1.0, "q90": 1.0}
SMOLVLA_NORM_MAP = {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
Stats = dict[str, dict[str, Tensor]]


def as_stats(raw: dict[str, dict[str, Any]]) -> Stats:
    """Stats from nested lists/arrays/tensors (e.g. a dataset's `stats.json`) as float32 tensors."""
    return {
        key: {name: torch.as_tensor(value, dtype=torch.float32) for name, value in fields.items()}
        for key, fields in raw.items()
    }


def flatten_stats(stats: Stats) -> dict[str, Tensor]:
    return {f"{key}.{name}": value for key, fields in stats.items() for name, value in fields.items()}


def unflatten_stats(flat: dict[str, Tensor]) -> Stats:
    stats: Stats = {}
    for full, value in flat.items():
        key, _, name = full.rpartition(".")
        stats.setdefault(key, {})[name] = value
    return stats


def stats_from_legacy(legacy: dict[str, Tensor], feature_keys: list[str], dataset: str | None = None) -> Stats:
    """Stats from old LeRobot in-policy buffers (`normalize_inputs.buffer_observation_state.mean`, ...).

    The buffer name is the feature key with dots as underscores, optionally behind a dataset prefix
    (`normalize_targets.so100_buffer_action.mean` in `smolvla_base`, LeRobot #4415). With several prefixes the
    caller must pick one (`dataset`); a buffer matching no feature is an error rather than dropped.
    """
    by_name = {k.replace(".", "_"): k for k in feature_keys}
    found: dict[str, Stats] = {}
    for full, value in legacy.items():
        module_buffer, _, name = full.rpartition(".")
        match = re.fullmatch(r"(?:(?P<prefix>.+)_)?buffer_(?P<feature>.+)", module_buffer.split(".", 1)[-1])
        if match is None or match["feature"] not in by_name:
            raise ConfigError(f"legacy normalization buffer {full!r} matches no feature of {feature_keys}")
        prefix = match["prefix"] or ""
        found.setdefault(prefix, {}).setdefault(by_name[match["feature"]], {})[name] = value.float()
    if dataset is not None:
        if dataset not in found:
            raise ConfigError(f"no legacy stats for dataset {dataset!r}; the checkpoint has {sorted(found)}")
        return found[dataset]
    if len(found) > 1:
        raise ConfigError(f"legacy stats exist for several datasets {sorted(found)}: choose one with dataset=")
    return next(iter(found.values()), {})


class _StatsStep(ProcessorStep):
    """Shared by Normalize and Unnormalize: which features, which mode per type, the statistics."""

    def __init__(
        self,
        features: dict[str, dict[str, Any]],
        norm_map: dict[str, str],
        stats: Stats | None = None,
        eps: float = 1e-8,
        normalize_observation_keys: list[str] | None = None,
    ):
        if normalize_observation_keys is not None:  # LeRobot's option: only these observation keys are normalized
            keep = set(normalize_observation_keys)
            features = {k: v for k, v in features.items() if k in keep or v["type"] == "ACTION"}
        self.normalize_observation_keys = normalize_observation_keys
        self.features = {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in features.items()}
        self.norm_map = dict(norm_map)
        self.eps = float(eps)
        self.stats = as_stats(stats or {})
        for key, spec in self.features.items():
            mode = self.mode(key)
            if mode not in MODES:
                raise ConfigError(f"normalization mode {mode!r} for {key!r} is not one of {MODES}")
            for name in REQUIRED[mode]:
                self._check(key, name, spec["shape"])

    def mode(self, key: str) -> str:
        kind = self.features[key]["type"]
        return self.norm_map.get(kind, "IDENTITY")

    def _check(self, key: str, name: str, shape: list[int]) -> None:
        if key not in self.stats:
            raise ConfigError(
                f"no normalization stats for {key!r} (mode {self.mode(key)}); stats have keys {sorted(self.stats)}"
            )
        if name not in self.stats[key]:
            raise ConfigError(f"stats for {key!r} lack {name!r}; they have {sorted(self.stats[key])}")
        value = self.stats[key][name]
        if not torch.isfinite(value).all():
            raise ConfigError(f"stats {key!r}.{name} contain NaN or Inf")
        if value.numel() != math.prod(shape) and value.shape[-1:] != tuple(shape[-1:]):
            raise ConfigError(f"stats {key!r}.{name} have shape {tuple(value.shape)}, feature shape is {shape}")
        if name == "std" and (value < 0).any():
            raise ConfigError(f"stats {key!r}.std has negative entries")

    def _field(self, key: str, name: str, x: Tensor) -> Tensor:
        """A statistic reshaped to x's last dim; widened with neutral values when x is zero-padded."""
        value = self.stats[key][name].to(device=x.device, dtype=x.dtype)
        if self.features[key]["type"] == "VISUAL":
            return value.reshape(-1, 1, 1) if value.numel() > 1 else value
        value = value.reshape(-1)
        width = x.shape[-1]
        if width < value.numel():
            raise ConfigError(f"{key!r} has {width} dims, fewer than its stats ({value.numel()})")
        if width > value.numel():
            value = torch.cat([value, value.new_full((width - value.numel(),), PAD_VALUE[name])])
        return value

    def _bounds(self, key: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """(low, high - low) of a range mode, with eps in place of a zero range (a constant feature), as LeRobot."""
        low_name, high_name = RANGE_FIELDS[self.mode(key)]
        low = self._field(key, low_name, x)
        span = self._field(key, high_name, x) - low
        return low, torch.where(span == 0, torch.full_like(span, self.eps), span)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"eps": self.eps, "features": self.features, "norm_map": self.norm_map}
        if self.normalize_observation_keys is not None:
            config["normalize_observation_keys"] = sorted(self.normalize_observation_keys)
        return config

    def state_dict(self) -> dict[str, Tensor]:
        return flatten_stats(self.stats)

    @classmethod
    def from_config(cls, config: dict[str, Any], state: dict[str, Tensor], directory: Path | None) -> _StatsStep:
        return cls(
            features=config.get("features", {}),
            norm_map=config.get("norm_map", SMOLVLA_NORM_MAP),
            stats=unflatten_stats(state),
            eps=config.get("eps", 1e-8),
            normalize_observation_keys=config.get("normalize_observation_keys"),
        )


class Normalize(_StatsStep):
    """Raw features → model space: MEAN_STD (x-mean)/(std+eps), range modes to [-1, 1], IDENTITY as is (LeRobot's math;
    its inverse omits eps, so unnormalize(normalize(x)) equals x up to a relative 1e-8)."""

    registry_name = "normalizer_processor"

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for key in self.features:
            if key not in batch or self.mode(key) == "IDENTITY":
                continue
            x = torch.as_tensor(batch[key]).float()
            if self.mode(key) == "MEAN_STD":
                out[key] = (x - self._field(key, "mean", x)) / (self._field(key, "std", x) + self.eps)
            else:
                low, span = self._bounds(key, x)
                out[key] = 2.0 * (x - low) / span - 1.0
        return out


class Unnormalize(_StatsStep):
    """Map model outputs back to robot units, cropping zero-padded dims, for a whole (B, chunk, d) chunk at once."""

    registry_name = "unnormalizer_processor"

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for key, spec in self.features.items():
            if key not in batch:
                continue
            x = torch.as_tensor(batch[key]).float()
            if spec["type"] != "VISUAL":
                x = x[..., : spec["shape"][-1]]
            if self.mode(key) == "MEAN_STD":
                x = x * self._field(key, "std", x) + self._field(key, "mean", x)
            elif self.mode(key) in RANGE_FIELDS:
                low, span = self._bounds(key, x)
                x = (x + 1.0) / 2.0 * span + low
            out[key] = x
        return out
