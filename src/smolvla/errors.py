"""The errors smolvla raises for bad input, so callers can catch them apart from bugs."""


class SmolVLAError(Exception):
    """Base class of every error smolvla raises on purpose."""


class ConfigError(SmolVLAError, ValueError):
    """A configuration value or key is invalid or unknown."""


class BatchError(SmolVLAError, ValueError):
    """A batch handed to the policy lacks a key, or has a wrong shape, dtype or non-finite values."""


class CheckpointError(SmolVLAError, ValueError):
    """A checkpoint directory is missing files, or its tensors do not match the architecture."""


class ServerError(SmolVLAError):
    """The policy server refused or could not answer (unreachable, wrong token, invalid request)."""
