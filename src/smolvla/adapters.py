"""Parameter-efficient fine-tuning with the `peft` library, in LeRobot's checkpoint format.

LeRobot 0.6.1 wraps a policy with `get_peft_model` and saves the adapter with peft's own `save_pretrained`
(`adapter_config.json` + `adapter_model.safetensors`, keys rooted at the policy: `base_model.model.model.…`) beside a
policy `config.json` with `use_peft: true`; `adapter_config.json` names the base policy (a path or hub id). smolvla's
module names are LeRobot's, so the same files come out here and either library loads the other's adapters.

The adapter layers are injected into the policy in place (peft's LoRA `Linear` wraps each target), so the trainer,
EMA and accelerate keep working on the same `SmolVLAPolicy` object; the `PeftModel` wrapper is kept only to save.
`peft` is an optional dependency (`smolvla[peft]`), imported when an adapter is asked for.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from smolvla.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONFIG_FILE = "config.json"  # the policy config (LeRobot's name; model.checkpoint.CONFIG_NAME)
ADAPTER_SUBDIR = "adapter"  # a merged checkpoint keeps its adapter here, for --resume

# LeRobot's SmolVLA defaults (`SmolVLAPolicy._get_default_peft_targets`): the expert's q/v projections and the
# projections into and out of the expert, all adapted (nothing fully trained).
PROJECTIONS = "state_proj|action_in_proj|action_out_proj|action_time_mlp_in|action_time_mlp_out"
DEFAULT_TARGETS = rf"(model\.vlm_with_expert\.lm_expert\..*\.(q|v)_proj|model\.({PROJECTIONS}))"
METHODS = ("LORA",)
_REGEX_CHARS = set("()|*+?[]\\^$")


@dataclass
class AdapterSpec:
    """What to adapt and how (LeRobot's `--peft.*` fields)."""

    method_type: str = "LORA"
    r: int = 16
    lora_alpha: int | None = None  # None: peft's default (8)
    lora_dropout: float = 0.0
    target_modules: str | None = None  # a regex (peft's full match), or comma-separated name suffixes; None: defaults
    full_training_modules: tuple[str, ...] = ()  # trained in full and saved with the adapter (peft's modules_to_save)
    init_type: str | None = None  # peft's init_lora_weights (e.g. "gaussian", "pissa"); None: peft's default

    def validate(self) -> None:
        if self.method_type.upper() not in METHODS:
            raise ConfigError(f"--peft.method_type must be one of {list(METHODS)}, got {self.method_type!r}")
        if self.r < 1:
            raise ConfigError(f"--peft.r must be >= 1, got {self.r}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"--peft.lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--peft.lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def targets(self) -> str | list[str]:
        """peft's form: a string is matched as a regex against the whole module name, a list by name suffix."""
        given = self.target_modules or DEFAULT_TARGETS
        if given == "all-linear" or _REGEX_CHARS & set(given):
            return given
        return [t.strip() for t in given.split(",") if t.strip()]

    def peft_config(self):
        from peft import LoraConfig

        kwargs: dict[str, Any] = {"r": self.r, "lora_dropout": self.lora_dropout, "target_modules": self.targets()}
        kwargs["modules_to_save"] = list(self.full_training_modules) or None
        if self.lora_alpha is not None:
            kwargs["lora_alpha"] = self.lora_alpha
        if self.init_type is not None:
            kwargs["init_lora_weights"] = self.init_type
        return LoraConfig(**kwargs)


def require_peft() -> None:
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise ConfigError("--peft.* needs the `peft` package: pip install 'smolvla[peft]'") from e


def add_adapter(policy: nn.Module, spec: AdapterSpec, base: str | None):
    """Freeze `policy` and inject the adapter layers `spec` describes (in place); returns peft's `PeftModel` around
    it (what `save_adapter` writes). Targets that match no module are an error naming them."""
    require_peft()
    from peft import get_peft_model

    spec.validate()
    missing = [m for m in spec.full_training_modules if not any(n.endswith(m) for n, _ in policy.named_modules())]
    if missing:
        raise ConfigError(f"--peft.full_training_modules {missing} match no module of the policy")
    for p in policy.parameters():
        p.requires_grad_(False)
    policy.name_or_path = base  # what peft writes as the adapter's base_model_name_or_path (as LeRobot does)
    try:
        model = get_peft_model(policy, spec.peft_config())
    except ValueError as e:
        raise ConfigError(f"--peft.target_modules={spec.target_modules or DEFAULT_TARGETS!r}: {e}") from e
    return model


def save_adapter(model, directory: Path) -> None:
    """peft's files (adapter_config.json, adapter_model.safetensors) into `directory`."""
    model.save_pretrained(str(directory))


def save_adapted(model, directory: Path, processors: tuple = (), merge: bool = False) -> None:
    """An adapted policy's checkpoint in `directory` (created here): peft's files beside LeRobot's `use_peft`
    config.json and the processors; or (`merge`) a plain policy with the adapters merged into its weights, which any
    LeRobot loads as is, keeping the adapter in `adapter/` for --resume."""
    if merge:  # merged on a copy: the weights being trained stay exactly as they are
        copy.deepcopy(model).merge_and_unload().save_pretrained(directory, processors=processors)
        save_adapter(model, directory / ADAPTER_SUBDIR)
        return
    directory.mkdir(parents=True)
    save_adapter(model, directory)
    base = model.peft_config["default"].base_model_name_or_path
    files = model.base_model.model.config.to_files()
    files[CONFIG_FILE] = {**files[CONFIG_FILE], "use_peft": True, "pretrained_path": base}
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    for pipeline in processors:
        pipeline.save(directory)


def is_adapter_dir(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def adapter_base(directory: Path) -> str:
    """The base policy an adapter was trained on (path or hub id), from its adapter_config.json."""
    try:
        base = json.loads((Path(directory) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {Path(directory) / ADAPTER_CONFIG}: {e}") from e
    if not base:
        raise CheckpointError(f"{Path(directory) / ADAPTER_CONFIG} names no base policy (base_model_name_or_path)")
    return base


def load_adapter(policy: nn.Module, directory: Path, trainable: bool):
    """Put the adapter saved in `directory` onto `policy` (built from its base); returns the `PeftModel`."""
    require_peft()
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(policy, str(directory), is_trainable=trainable)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot apply the adapter in {directory} to its base policy: {e}") from e


def load_merged(directory: Path, load_base: Callable[[str], nn.Module]) -> nn.Module:
    """An adapter checkpoint as a plain policy: its base (`load_base(base path or id)`) with the adapter merged
    into the weights, so inference runs at the base policy's cost."""
    policy = load_base(adapter_base(directory))
    return load_adapter(policy, directory, trainable=False).merge_and_unload()
