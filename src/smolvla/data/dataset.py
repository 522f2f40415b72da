"""A torch `Dataset` over a local LeRobot dataset (v3.0 or v2.1): frames with state, cameras, task and action chunks.

The tabular columns of the selected episodes are loaded once into numpy arrays (a million frames of 14-D state and
action is ~100 MB), so `__getitem__` only slices arrays and decodes camera frames. Action chunks follow LeRobot's
`delta_timestamps`: each offset is a whole number of frames, indices past the episode's ends are clamped to its
first/last frame and flagged in `<key>_is_pad`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from smolvla.data.meta import DatasetError, DatasetMeta, column, load_meta, read_parquet
from smolvla.data.video import VideoFrameReader, decode_image

ImageTransform = Callable[[torch.Tensor], torch.Tensor]


def chunk_delta_timestamps(chunk_size: int, fps: int, key: str = "action") -> dict[str, list[float]]:
    """SmolVLA's `delta_timestamps`: the current and the next `chunk_size - 1` actions."""
    return {key: [i / fps for i in range(chunk_size)]}


def split_episodes(episodes: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A reproducible train/validation split by whole episodes (frames of one episode never straddle it)."""
    episodes = sorted(int(e) for e in episodes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(episodes) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(episodes) > 1:
        n_val = 1
    order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(episodes[i] for i in order[:n_val])
    return [e for e in episodes if e not in set(val)], val


def frames_to_float(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Camera frames as stored and rendered, (..., H, W, 3) uint8, → LeRobot's image convention, (..., 3, H, W)
    float32 in [0, 1]. The one definition of that conversion: the dataset, the simulator agent and the policy server
    (through `smolvla.processors.ImagesToFloat`) all use it."""
    frames = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    return frames.movedim(-1, -3).float().div_(255.0)


class LeRobotDataset(Dataset):
    """Frames of a local LeRobot dataset as LeRobot-style sample dicts.

    Each item holds every non-camera feature (`observation.state`, `action`, ...; shape-[1] features as 0-d tensors),
    each camera as float32 (3, H, W) in [0, 1], `task` (the instruction string), and for every key in
    `delta_timestamps` a stacked (T, ...) value plus `<key>_is_pad` (T,) bool.
    """

    def __init__(
        self,
        root: str | Path,
        episodes: Sequence[int] | None = None,
        delta_timestamps: dict[str, Sequence[float]] | None = None,
        image_transforms: ImageTransform | None = None,
        tolerance_s: float = 1e-4,
        video_reader: VideoFrameReader | None = None,
        cache_frames: bool = False,
    ):
        self.meta: DatasetMeta = load_meta(root)
        self.root = self.meta.root
        self.image_transforms = image_transforms
        self.tolerance_s = tolerance_s
        self.video_reader = video_reader or VideoFrameReader(tolerance_s=tolerance_s)
        all_episodes = self.meta.episode_index.tolist()
        self.episodes = all_episodes if episodes is None else sorted(int(e) for e in episodes)
        if not self.episodes:
            raise DatasetError(f"{self.root}: no episodes selected (the dataset has {len(all_episodes)})")
        self._positions = np.array([self.meta.episode_position(e) for e in self.episodes], dtype=np.int64)
        self.delta_indices = self._delta_indices(delta_timestamps or {})
        self._load_rows()
        self.frames: dict[str, np.ndarray] = {}
        if cache_frames:
            self.cache_frames()

    # --- loading ---
    def _delta_indices(self, delta_timestamps: dict[str, Sequence[float]]) -> dict[str, np.ndarray]:
        out = {}
        fps = self.meta.fps
        for key, deltas in delta_timestamps.items():
            if key not in self.meta.features:
                raise DatasetError(f"delta_timestamps key {key!r} is not a feature of {self.root}")
            frames = np.asarray(deltas, dtype=np.float64) * fps
            if (np.abs(frames - np.round(frames)) > self.tolerance_s * fps).any():
                raise DatasetError(f"delta_timestamps[{key!r}] = {list(deltas)} are not multiples of 1/fps (fps={fps})")
            out[key] = np.round(frames).astype(np.int64)
        return out

    def _load_rows(self) -> None:
        features = self.meta.features
        self.array_keys = [k for k, f in features.items() if f["dtype"] not in ("image", "video")]
        selected = set(self.episodes)
        tables = []
        for path in dict.fromkeys(self.meta.data_files[p] for p in self._positions):
            table = read_parquet(path, [*self.array_keys, *self.meta.image_keys])
            episode = column(table, "episode_index", path)
            tables.append((path, table.filter(pa.array(np.isin(episode, list(selected))))))
        arrays: dict[str, list[np.ndarray]] = {k: [] for k in self.array_keys}
        images: dict[str, list[Any]] = {k: [] for k in self.meta.image_keys}
        for path, table in tables:
            for key in self.array_keys:
                shape = list(features[key]["shape"])
                values = column(table, key, path, shape)
                arrays[key].append(values.reshape(len(values)) if shape == [1] else values)
            for key in self.meta.image_keys:
                images[key].append(table.column(key).combine_chunks().field("bytes"))
        self.arrays = {k: np.concatenate(v) if v else np.empty(0) for k, v in arrays.items()}
        order = np.argsort(self.arrays["index"], kind="stable")
        self.arrays = {k: v[order] for k, v in self.arrays.items()}
        self.images = {k: pa.concat_arrays(v).take(pa.array(order)) for k, v in images.items()}
        lengths = self.meta.length[self._positions]
        counts = np.bincount(np.searchsorted(self.episodes, self.arrays["episode_index"]), minlength=len(self.episodes))
        if not np.array_equal(counts, lengths):
            bad = [e for e, c, n in zip(self.episodes, counts, lengths, strict=True) if c != n][:5]
            raise DatasetError(
                f"{self.root}: data files do not hold the frames the episode metadata lists (episodes {bad})"
            )
        self.ep_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.ep_end = self.ep_start + lengths
        self.row_episode = np.repeat(np.arange(len(self.episodes)), lengths)

    # --- access ---
    def __len__(self) -> int:
        return len(self.row_episode)

    @property
    def fps(self) -> int:
        return self.meta.fps

    def _rows(self, key: str, row: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray | None]:
        if key not in self.delta_indices:
            return np.array([row]), None
        query = row + self.delta_indices[key]
        return np.clip(query, start, end - 1), (query < start) | (query >= end)

    def cache_frames(self) -> None:
        """Decode every camera frame once, in file order, into RAM as uint8 (H·W·3 bytes per frame and camera).

        Worth it whenever the frames fit in memory (small simulator datasets: 10k frames of two 128 px cameras are
        1 GB): random access into a video then costs a slice instead of a seek and a decode of several frames.
        """
        positions = self._positions[self.row_episode].tolist()
        for key in self.meta.camera_keys:
            if key in self.frames:
                continue
            frames = np.empty((len(self), *self.meta.features[key]["shape"]), dtype=np.uint8)
            for row, position in enumerate(positions):
                frames[row] = self._decode(key, row, position)
            self.frames[key] = frames

    def _decode(self, key: str, row: int, episode_pos: int) -> np.ndarray:
        expected = tuple(self.meta.features[key]["shape"])
        if key in self.images:
            frame = decode_image(self.images[key][row].as_py(), f"{self.root} {key} row {row}")
        else:
            time_s = self.meta.video_from_s[key][episode_pos] + float(self.arrays["timestamp"][row])
            frame = self.video_reader.frame(self.meta.video_files[key][episode_pos], time_s)
        if frame.shape != expected:
            raise DatasetError(f"{self.root}: camera {key!r} frame has shape {frame.shape}, info.json says {expected}")
        return frame

    def _camera(self, key: str, rows: np.ndarray, episode_pos: int) -> torch.Tensor:
        frames = []
        for row in rows.tolist():
            frame = self.frames[key][row] if key in self.frames else self._decode(key, row, episode_pos)
            image = frames_to_float(frame)
            frames.append(self.image_transforms(image) if self.image_transforms else image)
        return torch.stack(frames)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} frames")
        e = int(self.row_episode[idx])
        start, end = int(self.ep_start[e]), int(self.ep_end[e])
        item: dict[str, Any] = {}
        for key in self.array_keys:
            rows, pad = self._rows(key, idx, start, end)
            item[key] = torch.tensor(self.arrays[key][rows if pad is not None else idx])
            if pad is not None:
                item[f"{key}_is_pad"] = torch.from_numpy(pad)
        episode_pos = int(self._positions[e])
        for key in self.meta.camera_keys:
            rows, pad = self._rows(key, idx, start, end)
            frames = self._camera(key, rows, episode_pos)
            item[key] = frames if pad is not None else frames[0]
            if pad is not None:
                item[f"{key}_is_pad"] = torch.from_numpy(pad)
        item["task"] = self.meta.tasks[int(self.arrays["task_index"][idx])]
        return item


class MultiLeRobotDataset(Dataset):
    """Several datasets back to back (dataset i's frames at `offsets[i]`), each item tagged with `dataset_index`.

    Pair with `WeightedDatasetSampler(sizes, weights)` to mix them in fixed proportions. Their sample keys must
    agree unless `same_features=False` (several robots: the caller pads their samples to one shape).
    """

    def __init__(self, datasets: Sequence[LeRobotDataset], same_features: bool = True):
        if not datasets:
            raise DatasetError("MultiLeRobotDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        reference = self._signature(self.datasets[0])
        for d in self.datasets[1:] if same_features else ():
            if self._signature(d) != reference:
                raise DatasetError(
                    f"dataset {d.root} has features {self._signature(d)}, but {self.datasets[0].root} has {reference}"
                )

    @staticmethod
    def _signature(dataset: LeRobotDataset) -> dict[str, tuple]:
        return {
            k: tuple(f["shape"]) for k, f in dataset.meta.features.items() if k.startswith(("observation", "action"))
        }

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for {len(self)} frames")
        which = int(np.searchsorted(self.offsets, idx, side="right") - 1)
        item = self.datasets[which][idx - int(self.offsets[which])]
        item["dataset_index"] = torch.tensor(which)
        return item
