"""smolvla: train, rectify, distil, evaluate and serve SmolVLA vision-language-action policies.

`import smolvla` stays light: the model (and transformers) load on first use of `smolvla.SmolVLAPolicy`.
"""

from smolvla.errors import BatchError, CheckpointError, ConfigError, SmolVLAError

__version__ = "0.1.0"
__all__ = ["BatchError", "CheckpointError", "ConfigError", "SmolVLAConfig", "SmolVLAError", "SmolVLAPolicy"]


def __getattr__(name: str):
    if name == "SmolVLAPolicy":
        from smolvla.policy import SmolVLAPolicy

        return SmolVLAPolicy
    if name == "SmolVLAConfig":
        from smolvla.model.config import SmolVLAConfig

        return SmolVLAConfig
    raise AttributeError(f"module 'smolvla' has no attribute {name!r}")
