"""Observation plumbing steps: raw camera frames, key renaming, camera checks, batching, padding and devices."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from smolvla.data.dataset import frames_to_float
from smolvla.errors import BatchError, ConfigError
from smolvla.keys import IMAGE_PREFIX, PADDING_MASK_SUFFIX, STATE_KEY, TASK_KEY
from smolvla.processors.pipeline import Batch, ProcessorStep


class ImagesToFloat(ProcessorStep):
    """A robot's raw frames, (..., H, W, 3) uint8, → the policy's images, (..., 3, H, W) float in [0, 1].

    Applied to raw observations before the policy's preprocessor (the agent, the server); not part of a saved
    pipeline, whose images are already float, as in LeRobot. Float images pass through unchanged.
    """

    registry_name = "smolvla_images_to_float"

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for key, value in batch.items():
            image = key.startswith(IMAGE_PREFIX) and not key.endswith(PADDING_MASK_SUFFIX)
            if image and value.dtype in (np.uint8, torch.uint8):  # numpy or torch frames; float passes through
                out[key] = frames_to_float(value)
        return out


class RenameObservations(ProcessorStep):
    """Rename batch keys, e.g. a robot's `observation.images.wrist` to the policy's `observation.images.camera2`."""

    registry_name = "rename_observations_processor"

    def __init__(self, rename_map: dict[str, str] | None = None):
        self.rename_map = dict(rename_map or {})
        targets = list(self.rename_map.values())
        if len(set(targets)) != len(targets):
            raise ConfigError(f"rename_map maps two keys to the same name: {self.rename_map}")

    def __call__(self, batch: Batch) -> Batch:
        out = {}
        for key, value in batch.items():
            new = self.rename_map.get(key, key)
            if key.endswith(PADDING_MASK_SUFFIX) and key.removesuffix(PADDING_MASK_SUFFIX) in self.rename_map:
                new = self.rename_map[key.removesuffix(PADDING_MASK_SUFFIX)] + PADDING_MASK_SUFFIX
            out[new] = value
        return out

    def get_config(self) -> dict[str, Any]:
        return {"rename_map": self.rename_map}


class CheckCameras(ProcessorStep):
    """Require the policy's cameras; optionally fill a missing one with a black image the model does not attend to.

    Without this, a camera the robot does not provide surfaces deep in the model; with `fill_missing`, policies
    trained with more views than a robot has (e.g. `smolvla_base`'s three) still run on the views present.
    """

    registry_name = "smolvla_camera_processor"
    derived = True  # a checkpoint's robot lacks the cameras its normalizer does not list (`load_processors`)

    def __init__(self, cameras: dict[str, list[int]], fill_missing: bool = False):
        self.cameras = {k: list(v) for k, v in cameras.items()}
        self.fill_missing = bool(fill_missing)

    def __call__(self, batch: Batch) -> Batch:
        missing = [k for k in self.cameras if k not in batch]
        if not missing:
            return batch
        if not self.fill_missing:
            present = sorted(k for k in batch if k.startswith(IMAGE_PREFIX))
            raise BatchError(
                f"cameras {missing} are missing; the policy expects {list(self.cameras)}, the batch has {present} "
                "(map names with a rename step, or enable fill_missing)"
            )
        if STATE_KEY not in batch:
            raise BatchError(f"cannot fill missing cameras without {STATE_KEY!r} to infer the batch size")
        state = torch.as_tensor(batch[STATE_KEY])
        lead = tuple(state.shape[:-1])
        out = dict(batch)
        for key in missing:
            out[key] = torch.zeros(*lead, *self.cameras[key], device=state.device)
            out[key + PADDING_MASK_SUFFIX] = torch.zeros(lead, dtype=torch.bool, device=state.device)
        return out

    def get_config(self) -> dict[str, Any]:
        return {"cameras": self.cameras, "fill_missing": self.fill_missing}


class AddBatchDim(ProcessorStep):
    """Give a single robot observation a batch dimension of 1 (state 1-D, images 3-D, task a string)."""

    registry_name = "to_batch_processor"

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for key, value in batch.items():
            if key == TASK_KEY and isinstance(value, str):
                out[key] = [value]
            elif isinstance(value, Tensor):
                vector = key in (STATE_KEY, "action", "observation.environment_state") and value.ndim == 1
                image = key.startswith(IMAGE_PREFIX) and not key.endswith(PADDING_MASK_SUFFIX) and value.ndim == 3
                if vector or image:
                    out[key] = value.unsqueeze(0)
                elif key.endswith(PADDING_MASK_SUFFIX) and value.ndim == 0:
                    out[key] = value.reshape(1)
        return out


class PadFeatures(ProcessorStep):
    """Zero-pad the last dim of vector features to fixed widths (e.g. robots of different DOF in one batch)."""

    registry_name = "smolvla_pad_processor"
    derived = True  # a checkpoint's robot is narrower than the policy when its normalizer says so

    def __init__(self, widths: dict[str, int]):
        self.widths = {k: int(v) for k, v in widths.items()}

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for key, width in self.widths.items():
            if key not in batch:
                continue
            x = torch.as_tensor(batch[key])
            if x.shape[-1] > width:
                raise BatchError(f"{key!r} has {x.shape[-1]} dims, more than the padded width {width}")
            out[key] = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        return out

    def get_config(self) -> dict[str, Any]:
        return {"widths": self.widths}


class ToDevice(ProcessorStep):
    """Move every tensor to a device (and floating tensors to a dtype, if set)."""

    registry_name = "device_processor"

    def __init__(self, device: str = "cpu", float_dtype: str | None = None):
        self.device = str(device)
        self.float_dtype = float_dtype
        if float_dtype is not None and not isinstance(getattr(torch, float_dtype, None), torch.dtype):
            raise ConfigError(f"float_dtype {float_dtype!r} is not a torch dtype name")

    def __call__(self, batch: Batch) -> Batch:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"processor device is {self.device!r} but CUDA is not available; load with device='cpu'")
        dtype = getattr(torch, self.float_dtype) if self.float_dtype else None
        out = {}
        for key, value in batch.items():
            if isinstance(value, Tensor):
                value = value.to(self.device, non_blocking=True)
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
            out[key] = value
        return out

    def get_config(self) -> dict[str, Any]:
        return {"device": self.device, "float_dtype": self.float_dtype}
