"""Training-time image augmentation with LeRobot's transforms and flag names, in torch (no torchvision here).

`--dataset.image_transforms.enable=true` applies, to every camera image of every training sample, up to
`max_num_transforms` transforms drawn (by weight, without replacement) from brightness, contrast, saturation, hue,
sharpness and a small affine (LeRobot's `ImageTransformsConfig` defaults and ranges; torchvision's formulas). Each
camera of each sample gets its own draw.

The draws come from a generator seeded by (seed, position of the sample in the run's stream of global batches), so
a resumed run or one on another number of processes augments every sample exactly as the original run did.
Validation, evaluation and serving never see these transforms.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.utils.data import Dataset

from smolvla import streams
from smolvla.errors import ConfigError
from smolvla.keys import IMAGE_PREFIX

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass
class Jitter:
    weight: float = 1.0  # relative chance of being one of the drawn transforms (0 = never)
    range: tuple[float, float] = (0.8, 1.2)  # the factor (hue: the shift) is drawn uniformly from it


@dataclass
class Affine:
    weight: float = 1.0
    degrees: tuple[float, float] = (-5.0, 5.0)  # rotation drawn uniformly from it
    translate: tuple[float, float] = (0.05, 0.05)  # largest shift as a fraction of width, height


@dataclass
class Transforms:
    brightness: Jitter = field(default_factory=lambda: Jitter(1.0, (0.8, 1.2)))
    contrast: Jitter = field(default_factory=lambda: Jitter(1.0, (0.8, 1.2)))
    saturation: Jitter = field(default_factory=lambda: Jitter(1.0, (0.5, 1.5)))
    hue: Jitter = field(default_factory=lambda: Jitter(1.0, (-0.05, 0.05)))
    sharpness: Jitter = field(default_factory=lambda: Jitter(1.0, (0.5, 1.5)))
    affine: Affine = field(default_factory=Affine)


@dataclass
class ImageTransformsConfig:
    enable: bool = False
    max_num_transforms: int = 3  # transforms applied to each image, drawn without replacement by weight
    random_order: bool = False  # False: in the order listed above (torchvision's suggested order)
    tfs: Transforms = field(default_factory=Transforms)

    def validate(self) -> None:
        if not self.enable:
            return
        where = "--dataset.image_transforms"
        if self.max_num_transforms < 1:
            raise ConfigError(f"{where}.max_num_transforms must be >= 1, got {self.max_num_transforms}")
        weights = {f.name: getattr(self.tfs, f.name).weight for f in dataclasses.fields(self.tfs)}
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"{where}.tfs.*.weight must be finite, >= 0 and not all 0, got {weights}")
        for name in ("brightness", "contrast", "saturation", "sharpness"):
            low, high = getattr(self.tfs, name).range
            if not 0 <= low <= high:
                raise ConfigError(f"{where}.tfs.{name}.range must be 0 <= low <= high, got {[low, high]}")
        low, high = self.tfs.hue.range
        if not -0.5 <= low <= high <= 0.5:
            raise ConfigError(f"{where}.tfs.hue.range must be within [-0.5, 0.5], low <= high, got {[low, high]}")
        if not all(0 <= t <= 1 for t in self.tfs.affine.translate):
            raise ConfigError(f"{where}.tfs.affine.translate must be in [0, 1], got {list(self.tfs.affine.translate)}")


# --- the transforms: (C, H, W) float images in [0, 1], one drawn parameter each ---
def _blend(image: Tensor, other: Tensor | float, factor: float) -> Tensor:
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def _gray(image: Tensor) -> Tensor:
    r, g, b = image.unbind(0)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b)[None]


def brightness(image: Tensor, factor: float) -> Tensor:
    return (image * factor).clamp(0.0, 1.0)


def contrast(image: Tensor, factor: float) -> Tensor:
    return _blend(image, _gray(image).mean(), factor)


def saturation(image: Tensor, factor: float) -> Tensor:
    return _blend(image, _gray(image), factor)


def hue(image: Tensor, shift: float) -> Tensor:
    """Rotate the hue by `shift` turns (RGB → HSV → RGB, as torchvision's adjust_hue)."""
    r, g, b = image.unbind(0)
    maxc, minc = image.max(dim=0).values, image.min(dim=0).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    h = (h + shift) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = maxc * (1 - s), maxc * (1 - s * f), maxc * (1 - s * (1 - f))
    i = i.to(torch.int64) % 6
    choices = [(maxc, t, p), (q, maxc, p), (p, maxc, t), (p, q, maxc), (t, p, maxc), (maxc, p, q)]
    out = [torch.zeros_like(h) for _ in range(3)]
    for k, channels in enumerate(choices):
        for c in range(3):
            out[c] = torch.where(i == k, channels[c], out[c])
    return torch.stack(out)


def sharpness(image: Tensor, factor: float) -> Tensor:
    """Blend with the 3x3 smoothed image (kernel 1 1 1 / 1 5 1 / 1 1 1, edges kept), as torchvision."""
    kernel = torch.ones(3, 3, dtype=image.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(image.shape[0], 1, 3, 3)
    blurred = image.clone()
    blurred[:, 1:-1, 1:-1] = F.conv2d(image[None], kernel, groups=image.shape[0])[0]
    return _blend(image, blurred, factor)


def affine(image: Tensor, angle: float, dx: int, dy: int) -> Tensor:
    """Rotate by `angle` degrees about the centre and shift by (dx, dy) pixels; nearest sampling, black fill."""
    _, height, width = image.shape
    a, tx, ty = math.radians(angle), -2.0 * dx / width, -2.0 * dy / height
    cos, sin, aspect = math.cos(a), math.sin(a), height / width
    # output (normalized) -> input: undo the shift, then the rotation (in pixel units, hence the aspect ratios)
    theta = torch.tensor(
        [[cos, sin * aspect, cos * tx + sin * aspect * ty],
         [-sin / aspect, cos, -sin / aspect * tx + cos * ty]], dtype=image.dtype,
    )  # fmt: skip
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]


class ImageAugmenter:
    """Draws and applies the configured transforms to one image, from a given generator."""

    def __init__(self, config: ImageTransformsConfig):
        self.config = config
        self.names = [f.name for f in dataclasses.fields(config.tfs) if getattr(config.tfs, f.name).weight > 0]
        self.weights = torch.tensor([getattr(config.tfs, n).weight for n in self.names], dtype=torch.float64)
        self.count = min(config.max_num_transforms, len(self.names))

    def __call__(self, image: Tensor, g: torch.Generator) -> Tensor:
        chosen = torch.multinomial(self.weights, self.count, replacement=False, generator=g)
        if not self.config.random_order:
            chosen = chosen.sort().values
        for i in chosen.tolist():
            image = self._apply(self.names[i], image, g)
        return image

    def _apply(self, name: str, image: Tensor, g: torch.Generator) -> Tensor:
        spec = getattr(self.config.tfs, name)
        if name == "affine":
            angle = _uniform(g, *spec.degrees)
            max_dx, max_dy = spec.translate[0] * image.shape[-1], spec.translate[1] * image.shape[-2]
            dx, dy = round(_uniform(g, -max_dx, max_dx)), round(_uniform(g, -max_dy, max_dy))
            return affine(image, angle, dx, dy)
        return {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue,
                "sharpness": sharpness}[name](image, _uniform(g, *spec.range))  # fmt: skip


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


class AugmentedSamples(Dataset):
    """A training dataset whose items are fetched by (frame index, stream position) and augmented by a generator
    seeded from (seed, position): the same sample at the same place in the run is always augmented the same way."""

    def __init__(self, dataset: Dataset, config: ImageTransformsConfig, seed: int):
        self.dataset, self.augment, self.seed = dataset, ImageAugmenter(config), seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, position = key
        item = self.dataset[index]
        g = torch.Generator().manual_seed(streams.batch_seed(self.seed, position, streams.AUGMENT))
        for camera in sorted(k for k in item if k.startswith(IMAGE_PREFIX) and item[k].dim() == 3):
            item[camera] = self.augment(item[camera], g)  # (C, H, W): SmolVLA reads one frame per camera
        return item
