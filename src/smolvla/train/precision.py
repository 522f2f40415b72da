"""Mixed precision: bf16 autocast of forward and backward, the same switch for training, teachers and validation.

Our own autocast rather than accelerate's: accelerate's mixed-precision state is process-wide and could not change
between two runs in one Python process (a sweep, the demo, continual training's stages).
"""

import torch


def autocast(device: torch.device | str, enabled: bool):
    """bf16 autocast on `device`'s type when `enabled`, else a no-op context."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
