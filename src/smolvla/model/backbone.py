"""Where the VLM backbone's architecture comes from.

A LeRobot config names its backbone by `vlm_model_name`, normally a hub id. smolvla resolves it, in order, from an
explicit override, a local directory (absolute, or relative to the checkpoint directory, as in a self-contained
checkpoint), a built-in preset of known backbones (no download needed), or the Hugging Face cache (`smolvla.hub`).
Only the architecture is taken (config.json and the ids of the
image special tokens); the weights always come from the policy's own `model.safetensors`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from transformers import SmolVLMConfig

from smolvla import hub
from smolvla.errors import ConfigError

SMOLVLM2_500M = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"

# SmolVLM2-500M-Video-Instruct's architecture (config values only) and its special-token ids.
_SMOLVLM2_500M_CONFIG: dict[str, Any] = {
    "model_type": "smolvlm",
    "architectures": ["SmolVLMForConditionalGeneration"],
    "image_token_id": 49190,
    "scale_factor": 4,
    "vocab_size": 49280,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "head_dim": 64,
        "vocab_size": 49280,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "smolvlm_vision",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 512,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}

# A backbone small enough for CPU tests and the demo, with SmolVLM2's vocabulary so its real tokenizer fits.
_TINY_CONFIG: dict[str, Any] = {
    "model_type": "smolvlm",
    "architectures": ["SmolVLMForConditionalGeneration"],
    "image_token_id": 49190,
    "scale_factor": 2,
    "vocab_size": 49280,
    "tie_word_embeddings": False,
    "text_config": {
        **_SMOLVLM2_500M_CONFIG["text_config"],
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 1024,
    },
    "vision_config": {
        **_SMOLVLM2_500M_CONFIG["vision_config"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
    },
}

_SMOLVLM2_SPECIAL_IDS = {FAKE_IMAGE_TOKEN: 49189, GLOBAL_IMAGE_TOKEN: 49152}
TINY_BACKBONE = "smolvla/tiny-backbone"  # no repository anywhere: checkpoints carry it in `vlm/`
BACKBONE_PRESETS: dict[str, tuple[dict[str, Any], dict[str, int]]] = {
    SMOLVLM2_500M: (_SMOLVLM2_500M_CONFIG, _SMOLVLM2_SPECIAL_IDS),
    TINY_BACKBONE: (_TINY_CONFIG, _SMOLVLM2_SPECIAL_IDS),
}
HUB_BACKBONES = frozenset({SMOLVLM2_500M})  # presets that are also real Hugging Face repositories (LeRobot finds them)


@dataclass
class Backbone:
    """A resolved backbone: its SmolVLM config as a dict, the image special-token ids, and its directory if any."""

    config: dict[str, Any]
    fake_image_token_id: int
    global_image_token_id: int
    directory: Path | None = None
    repo_id: str | None = None  # resolved from the Hugging Face cache: checkpoints keep naming it by this id

    def transformers_config(self, num_text_layers: int | None = None):
        """The `transformers.SmolVLMConfig`, keeping only the text layers SmolVLA uses (the rest are never built).

        More layers than the backbone has means all of them, as in LeRobot (it slices `layers[:num_vlm_layers]`):
        a LeRobot checkpoint saying `num_vlm_layers: 16` over a 4-layer backbone loads with its 4 layers."""
        raw = copy.deepcopy(self.config)
        if num_text_layers is not None:
            available = raw["text_config"].get("num_hidden_layers", 0)
            raw["text_config"]["num_hidden_layers"] = min(num_text_layers, available)
        raw.pop("architectures", None)
        raw.pop("model_type", None)
        cfg = SmolVLMConfig(**raw)
        # SmolVLA runs its own attention over the text layers; the vision tower uses PyTorch SDPA.
        cfg._attn_implementation = "sdpa"
        cfg.vision_config._attn_implementation = "sdpa"
        return cfg


def _special_ids_from_directory(directory: Path) -> dict[str, int]:
    tok_file = directory / "tokenizer.json"
    if not tok_file.is_file():
        raise ConfigError(
            f"backbone directory {directory} has no tokenizer.json, needed for the image special-token ids "
            "(add_image_special_tokens=true)"
        )

    names = {"fake_image_token": FAKE_IMAGE_TOKEN, "global_image_token": GLOBAL_IMAGE_TOKEN}
    cfg_file = directory / "tokenizer_config.json"
    if cfg_file.is_file():
        tok_cfg = json.loads(cfg_file.read_text())
        names = {k: tok_cfg.get(k, v) for k, v in names.items()}
    tokenizer = Tokenizer.from_file(str(tok_file))
    ids = {}
    for name in names.values():
        token_id = tokenizer.token_to_id(name)
        if token_id is None:
            raise ConfigError(f"tokenizer in {directory} has no token {name!r}")
        ids[name] = token_id
    return ids


def load_backbone_directory(directory: Path, need_special_ids: bool) -> Backbone:
    cfg_file = directory / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read backbone config {cfg_file}: {e}") from e
    for key in ("text_config", "vision_config"):
        if key not in config:
            raise ConfigError(f"backbone config {cfg_file} has no {key!r}: is it a SmolVLM config?")
    # The ids matter only when image special tokens are used; then they come from this tokenizer, or, for a preset's
    # architecture saved without one (a `vlm/` written by smolvla), from the preset.
    preset_ids = next((ids for known, ids in BACKBONE_PRESETS.values() if known == config), None)
    if not need_special_ids:
        ids = _SMOLVLM2_SPECIAL_IDS
    elif preset_ids is not None and not (directory / "tokenizer.json").is_file():
        ids = preset_ids
    else:
        ids = _special_ids_from_directory(directory)
    return Backbone(config, ids[FAKE_IMAGE_TOKEN], ids[GLOBAL_IMAGE_TOKEN], directory)


def resolve_backbone(
    vlm_model_name: str,
    *,
    checkpoint_dir: Path | None = None,
    override: Backbone | dict[str, Any] | str | Path | None = None,
    need_special_ids: bool = False,
) -> Backbone:
    """Find the backbone architecture for `vlm_model_name` (see module docstring for the order)."""
    if override is not None:
        if isinstance(override, Backbone):
            return override
        if isinstance(override, dict):
            return Backbone(copy.deepcopy(override), *_default_ids())
        return load_backbone_directory(Path(override), need_special_ids)
    candidates = []
    path = Path(vlm_model_name)
    if checkpoint_dir is not None and not path.is_absolute():
        candidates.append(checkpoint_dir / path)
    candidates.append(path)
    for cand in candidates:
        if (cand / "config.json").is_file():
            return load_backbone_directory(cand, need_special_ids)
    if vlm_model_name in BACKBONE_PRESETS:
        config, ids = BACKBONE_PRESETS[vlm_model_name]
        return Backbone(copy.deepcopy(config), ids[FAKE_IMAGE_TOKEN], ids[GLOBAL_IMAGE_TOKEN])
    if hub.is_repo_id(vlm_model_name):  # another backbone named by hub id: its config.json from the cache
        try:
            backbone = load_backbone_directory(hub.resolve(vlm_model_name), need_special_ids)
            return dataclasses.replace(backbone, repo_id=vlm_model_name)
        except hub.HubError as e:
            raise ConfigError(f"cannot resolve backbone {vlm_model_name!r}: {e}") from e
    raise ConfigError(
        f"cannot resolve backbone {vlm_model_name!r}: not a local directory with config.json "
        f"(looked in {[str(c) for c in candidates]}) and not a built-in preset {sorted(BACKBONE_PRESETS)}; "
        "pass vlm_config= to give the architecture explicitly"
    )


def _default_ids() -> tuple[int, int]:
    return _SMOLVLM2_SPECIAL_IDS[FAKE_IMAGE_TOKEN], _SMOLVLM2_SPECIAL_IDS[GLOBAL_IMAGE_TOKEN]
