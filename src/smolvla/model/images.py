"""Camera preprocessing in torch (torchvision is unavailable here): aspect-preserving resize and pad, as LeRobot."""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812
from torch import Tensor


def resize_with_pad(images: Tensor, width: int, height: int, pad_value: float = 0.0) -> Tensor:
    """Fit (B, C, H, W) into (height, width) keeping the aspect ratio; pad the top and left.

    Bilinear with half-pixel centres and no antialiasing, sizes floored, content in the bottom-right corner:
    exactly LeRobot's `resize_with_pad`, whose pretrained checkpoints expect this layout.
    """
    cur_h, cur_w = images.shape[-2:]
    if (cur_h, cur_w) == (height, width):
        return images
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return F.pad(resized, (max(0, width - new_w), 0, max(0, height - new_h), 0), value=pad_value)
