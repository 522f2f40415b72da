"""Several robots in one run: datasets grouped into embodiments, each padded to the policy's widths and normalized
with its own statistics.

SmolVLA was pretrained on community datasets of many robots by zero-padding every state and action to
`max_state_dim` / `max_action_dim`. Here an *embodiment* is the datasets that share a robot's features (state and
action widths, cameras, after `--rename_map`): its statistics are merged, and it gets its own processors in the
checkpoint, so each robot is served in its own width and units. The policy is built on the widest state and action
and the union of cameras. In a training batch every sample is padded to those widths (zeros, which normalization
keeps at zero), a camera its robot lacks is a black image with `<camera>_padding_mask` False, and
`action_dim_is_pad` keeps the padded action dims out of the loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from smolvla.data import MultiLeRobotDataset
from smolvla.data.meta import DatasetError, DatasetMeta
from smolvla.data.stats import aggregate_stats
from smolvla.keys import ACTION_DIM_IS_PAD, ACTION_KEY, EMBODIMENT_INDEX, PADDING_MASK_SUFFIX, STATE_KEY
from smolvla.model.images import resize_with_pad
from smolvla.processors import Normalize, Pipeline
from smolvla.processors.language import NewlineTask, Tokenize
from smolvla.processors.observation import ToDevice

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Embodiment:
    """One robot's datasets: their features under the policy's names, merged statistics, the renames that apply."""

    name: str
    datasets: list[int]  # indices into the run's datasets
    features: dict[str, dict[str, Any]]
    stats: dict
    rename_map: dict[str, str] = field(default_factory=dict)

    @property
    def cameras(self) -> dict[str, list[int]]:
        return {k: list(f["shape"]) for k, f in self.features.items() if f["dtype"] in ("video", "image")}

    def width(self, key: str) -> int:
        return int(self.features[key]["shape"][-1])

    def robot(self) -> dict[str, list[int]]:
        """This robot's features as the processors take them (`make_processors(robot=...)`): cameras channel-first."""
        spec = {k: [self.width(k)] for k in (STATE_KEY, ACTION_KEY)}
        return spec | {k: [shape[2], shape[0], shape[1]] for k, shape in self.cameras.items()}

    def summary(self) -> dict[str, Any]:
        """What `embodiments.json` records of this robot (for people and for `--embodiment` errors)."""
        return {"state_dim": self.width(STATE_KEY), "action_dim": self.width(ACTION_KEY), "cameras": list(self.cameras)}


def signature(features: dict[str, dict[str, Any]]) -> tuple:
    return tuple(sorted((k, tuple(f["shape"])) for k, f in features.items() if k.startswith(("observation", "action"))))


def group_embodiments(
    metas: list[DatasetMeta], features: list[dict], renames: list[dict], stats: list[dict], names: tuple[str, ...]
) -> list[Embodiment]:
    """Datasets → embodiments. With `names` (one per dataset, `--dataset.embodiment`), datasets of one name form one
    embodiment and must agree on features; without, datasets with the same features do, named by their robot_type
    when those differ, else by their first dataset's directory."""
    if names and len(names) != len(metas):
        raise DatasetError(f"--dataset.embodiment has {len(names)} names for {len(metas)} datasets")
    keys = list(names) if names else [signature(f) for f in features]
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    embodiments = []
    for key, members in groups.items():
        first = members[0]
        for i in members[1:]:
            if signature(features[i]) != signature(features[first]):
                raise DatasetError(
                    f"datasets {metas[first].root} and {metas[i].root} are both embodiment {key!r} but their features "
                    f"differ: {dict(signature(features[first]))} vs {dict(signature(features[i]))}"
                )
        parts = [stats[i] for i in members]
        merged = parts[0] if len(parts) == 1 or None in parts else aggregate_stats(parts)
        name = key if names else ""
        embodiments.append(Embodiment(name, members, features[first], merged, renames[first]))
    if not names:
        robot_types = [metas[e.datasets[0]].info.get("robot_type") or "" for e in embodiments]
        distinct = all(robot_types) and len(set(robot_types)) == len(robot_types)
        for e, robot_type in zip(embodiments, robot_types, strict=True):
            e.name = robot_type if distinct else Path(metas[e.datasets[0]].root).name
    for e in embodiments if len(embodiments) > 1 else ():  # names become file names only with several robots
        if not NAME.fullmatch(e.name):
            raise DatasetError(f"embodiment name {e.name!r} must be letters, digits, '_', '-' or '.' (a file name)")
    if len({e.name for e in embodiments}) != len(embodiments):
        raise DatasetError(
            f"embodiments {[e.name for e in embodiments]} are not distinct: name them with --dataset.embodiment"
        )
    return embodiments


def widest_features(embodiments: list[Embodiment]) -> dict[str, dict[str, Any]]:
    """The features the policy is built on: the widest state and action, every embodiment's cameras (first shape)."""
    features = dict(embodiments[0].features)
    for e in embodiments[1:]:
        for key, spec in e.features.items():
            if key in (STATE_KEY, ACTION_KEY):
                if e.width(key) > int(features[key]["shape"][-1]):
                    features[key] = spec
            else:
                features.setdefault(key, spec)
    return features


class PaddedSamples(Dataset):
    """The run's samples in the policy's shape, whichever robot they come from (a `MultiLeRobotDataset` view)."""

    def __init__(self, data: MultiLeRobotDataset, embodiments: list[Embodiment], features: dict[str, dict]):
        self.data = data
        self.datasets, self.sizes = data.datasets, data.sizes
        self.embodiment_of = {i: n for n, e in enumerate(embodiments) for i in e.datasets}
        self.renames = [e.rename_map for e in embodiments]
        self.state_dim, self.action_dim = (int(features[k]["shape"][-1]) for k in (STATE_KEY, ACTION_KEY))
        self.cameras = {k: f["shape"] for k, f in features.items() if f["dtype"] in ("video", "image")}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        raw = self.data[idx]
        which = self.embodiment_of[int(raw["dataset_index"])]
        item = {self.renames[which].get(k, k): v for k, v in raw.items()}
        item[EMBODIMENT_INDEX] = torch.tensor(which)
        item[STATE_KEY] = _pad(item[STATE_KEY], self.state_dim)
        width = item[ACTION_KEY].shape[-1]
        item[ACTION_KEY] = _pad(item[ACTION_KEY], self.action_dim)
        item[ACTION_DIM_IS_PAD] = torch.arange(self.action_dim) >= width
        for key, (height, width_px, channels) in self.cameras.items():
            image = item.get(key)
            if image is None:
                item[key] = torch.zeros(channels, height, width_px)
            elif tuple(image.shape[-2:]) != (height, width_px):  # same camera name, another resolution
                item[key] = resize_with_pad(image[None], width_px, height)[0]
            item[key + PADDING_MASK_SUFFIX] = torch.tensor(image is not None)
        return item


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


class MixedPreprocessor:
    """A training batch of several robots → model space: language and device once, then every row normalized by its
    own embodiment's statistics (each normalizer over the whole padded batch, rows picked by `embodiment_index`;
    state and action vectors are small, so this beats splitting the batch)."""

    def __init__(self, pipelines: list[Pipeline]):
        shared = (NewlineTask, Tokenize, ToDevice)
        self.shared = Pipeline([s for s in pipelines[0].steps if isinstance(s, shared)], "mixed_preprocessor")
        self.normalizers = [p.step(Normalize) for p in pipelines]

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        batch = self.shared(raw)
        which = batch[EMBODIMENT_INDEX]
        rows = torch.arange(len(which), device=which.device)
        for key in (STATE_KEY, ACTION_KEY):
            if key in batch:
                per_embodiment = torch.stack([n({key: batch[key]})[key] for n in self.normalizers])
                batch[key] = per_embodiment[which, rows]
        return batch
