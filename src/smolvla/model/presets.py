"""Built-in architectures by name: the config fields `SmolVLAPolicy.from_preset` starts from."""

from __future__ import annotations

import copy
from typing import Any

from smolvla.errors import ConfigError
from smolvla.keys import ACTION_KEY, STATE_KEY
from smolvla.model.backbone import SMOLVLM2_500M, TINY_BACKBONE

PRESETS: dict[str, dict[str, Any]] = {
    # LeRobot's SmolVLA defaults on SmolVLM2-500M: the architecture of `lerobot/smolvla_base`.
    # Field values as in that checkpoint's config.json (0 means "unset" for expert layers and prefix length).
    "smolvla_base": {
        "input_features": {
            STATE_KEY: {"type": "STATE", "shape": [6]},
            **{f"observation.images.camera{i}": {"type": "VISUAL", "shape": [3, 256, 256]} for i in (1, 2, 3)},
        },
        "output_features": {ACTION_KEY: {"type": "ACTION", "shape": [6]}},
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
    """The config fields of a built-in architecture ("smolvla_base", "tiny"), a copy the caller may change."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
