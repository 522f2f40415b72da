"""Write LeRobot v3.0 datasets: episodes of numpy frames → parquet + mp4 + metadata, atomically.

The layout, column types and metadata follow what LeRobot writes and its `LeRobotDataset` reads (see
`smolvla.data.meta`): vectors as `fixed_size_list<float32>`, `timestamp` float32, indices int64, cameras either as
mp4 (AV1 by default, episodes back to back, `from_timestamp` = frames before / fps) or as PNG bytes in a
`struct<bytes, path>` column, per-episode stats in the episode rows and pooled stats in `meta/stats.json`.
Everything is written into a hidden temporary directory next to the target and renamed into place by `finalize`,
so a crash never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.atomic import remove_stale_temps, replace_directory, temp_directory_for
from smolvla.data.meta import (
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    DatasetError,
)
from smolvla.data.stats import aggregate_stats, image_stats, sample_indices, stats_to_json, vector_stats
from smolvla.data.video import VideoEncoder, VideoSettings, encode_png

CODEBASE_VERSION = "v3.0"
CAMERA_NAMES = ["height", "width", "channels"]


def _pandas_index_metadata() -> bytes:
    """The `pandas` schema metadata that makes `pd.read_parquet` use the task strings as the index (as LeRobot)."""
    meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": None}
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": "smolvla"},
        "pandas_version": "2.2.3",
    }
    return json.dumps(meta).encode()


class _FileCounter:
    """LeRobot's chunk/file numbering: file 0..chunks_size-1 within a chunk directory, then the next chunk."""

    def __init__(self, chunks_size: int):
        self.chunks_size = chunks_size
        self.chunk, self.file = 0, 0

    def advance(self) -> None:
        self.file += 1
        if self.file == self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class DatasetWriter:
    """Create a LeRobot v3.0 dataset episode by episode.

    `features` uses LeRobot's feature dicts, e.g. `{"observation.state": {"dtype": "float32", "shape": [6],
    "names": [...]}, "observation.images.top": {"dtype": "video", "shape": [128, 128, 3]}}`; the five bookkeeping
    features (timestamp, frame_index, episode_index, index, task_index) are added automatically.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        robot_type: str | None = None,
        video: VideoSettings | None = None,
        data_files_size_in_mb: int = 100,
        video_files_size_in_mb: int = 200,
        chunks_size: int = 1000,
        overwrite: bool = False,
        staging: Path | None = None,
    ):
        """`staging`: a sibling directory to build in (e.g. a resumable collection's own); by default the dataset is
        built in a hidden sibling, and what a killed writer of the same root left there is removed first."""
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise DatasetError(f"{self.root} already exists (pass overwrite=True to replace it)")
        remove_stale_temps(self.root, staging)
        self.fps = int(fps)
        self.features = self._check_features(features)
        self.robot_type = robot_type
        self.video = video or VideoSettings()
        self.data_mb, self.video_mb, self.chunks_size = data_files_size_in_mb, video_files_size_in_mb, chunks_size
        self.tmp: Path | None = temp_directory_for(self.root, staging)
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.total_frames = 0
        self._data = _FileCounter(chunks_size)
        self._data_writer = None
        self._data_bytes = 0
        self._videos: dict[str, tuple[_FileCounter, VideoEncoder | None]] = {
            k: (_FileCounter(chunks_size), None) for k in self.video_keys
        }

    # --- features ---
    @staticmethod
    def _check_features(features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for name, spec in features.items():
            if name in DEFAULT_FEATURES:
                continue
            if "/" in name:
                raise DatasetError(f"feature name {name!r} must not contain '/'")
            if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
                raise DatasetError(f"feature {name!r} needs 'dtype' and 'shape', got {spec!r}")
            spec = {"dtype": spec["dtype"], "shape": [int(s) for s in spec["shape"]], "names": spec.get("names")}
            if spec["dtype"] in ("image", "video"):
                if len(spec["shape"]) != 3 or spec["shape"][2] != 3:
                    raise DatasetError(f"camera {name!r} must have shape [H, W, 3], got {spec['shape']}")
                spec["names"] = CAMERA_NAMES
            elif spec["dtype"] == "string":
                raise DatasetError(f"feature {name!r}: per-frame strings go in `task`, not in features")
            else:
                try:
                    np.dtype(spec["dtype"])
                except TypeError as e:
                    raise DatasetError(f"feature {name!r} has unknown dtype {spec['dtype']!r}") from e
            out[name] = spec
        return {**out, **DEFAULT_FEATURES}

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    # --- episodes ---
    def add_episode(self, frames: dict[str, np.ndarray], task: str | Sequence[str]) -> int:
        """Append one episode: every feature as an array with a leading time axis; one task or one per frame."""
        if self.tmp is None:
            raise DatasetError("writer is already finalized")
        user = [k for k in self.features if k not in DEFAULT_FEATURES]
        missing, extra = [k for k in user if k not in frames], [k for k in frames if k not in self.features]
        if missing or extra:
            raise DatasetError(f"episode features do not match the dataset: missing {missing}, unknown {extra}")
        lengths = {k: len(frames[k]) for k in user}
        length = next(iter(lengths.values()), 0)
        if length == 0 or len(set(lengths.values())) != 1:
            raise DatasetError(f"episode features must have the same non-zero length, got {lengths}")
        tasks = [task] * length if isinstance(task, str) else list(task)
        if len(tasks) != length or not all(isinstance(t, str) and t for t in tasks):
            raise DatasetError(f"task must be a non-empty string or {length} of them, got {task!r}")
        for t in tasks:
            self.tasks.setdefault(t, len(self.tasks))
        episode = len(self.episodes)
        start = self.total_frames
        frame_index = np.arange(length, dtype=np.int64)
        defaults = {
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, episode, dtype=np.int64),
            "index": start + frame_index,
            "task_index": np.array([self.tasks[t] for t in tasks], dtype=np.int64),
        }
        columns, stats = {}, {}
        for key, spec in self.features.items():
            value = defaults[key] if key in DEFAULT_FEATURES else np.asarray(frames[key])
            if spec["dtype"] in ("image", "video"):
                if value.shape[1:] != tuple(spec["shape"]) or value.dtype != np.uint8:
                    raise DatasetError(
                        f"camera {key!r} frames must be ({length}, {', '.join(map(str, spec['shape']))}) uint8, "
                        f"got {value.shape} {value.dtype}"
                    )
                stats[key] = image_stats(value[sample_indices(length)])
                if spec["dtype"] == "image":
                    columns[key] = pa.array(
                        [{"bytes": encode_png(img), "path": f"frame-{i:06d}.png"} for i, img in enumerate(value)],
                        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
                    )
                continue
            shape = tuple(spec["shape"])
            flat = value.reshape(length, -1) if value.ndim > 1 else value.reshape(length, 1)
            if flat.shape[1] != int(np.prod(shape)) or (value.ndim > 1 and value.shape[1:] != shape):
                raise DatasetError(
                    f"feature {key!r} must be ({length}, {', '.join(map(str, shape))}), got {value.shape}"
                )
            if not np.isfinite(flat.astype(np.float64)).all():
                raise DatasetError(f"feature {key!r} of episode {episode} contains NaN or Inf")
            dtype = np.dtype(spec["dtype"])
            stats[key] = vector_stats(flat)
            if shape == (1,):
                columns[key] = pa.array(flat[:, 0].astype(dtype))
            else:
                element = pa.from_numpy_dtype(dtype)
                columns[key] = pa.FixedSizeListArray.from_arrays(
                    pa.array(flat.astype(dtype).reshape(-1)), type=pa.list_(pa.field("element", element), flat.shape[1])
                )
        row = {
            "episode_index": episode,
            "tasks": sorted(set(tasks), key=tasks.index),
            "length": length,
            **self._write_data(pa.table(columns)),
            "dataset_from_index": start,
            "dataset_to_index": start + length,
        }
        for key in self.video_keys:
            row.update(self._write_video(key, frames[key]))
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self.total_frames += length
        return episode

    def _write_data(self, table) -> dict[str, int]:
        if self._data_writer is not None and self._data_bytes + table.nbytes > self.data_mb * 1024**2:
            self._data_writer.close()
            self._data_writer = None
            self._data.advance()
        if self._data_writer is None:
            path = self.tmp / DATA_PATH.format(chunk_index=self._data.chunk, file_index=self._data.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            self._data_bytes = 0
        self._data_writer.write_table(table)
        self._data_bytes += table.nbytes
        return {"data/chunk_index": self._data.chunk, "data/file_index": self._data.file}

    def _write_video(self, key: str, frames: np.ndarray) -> dict[str, Any]:
        counter, encoder = self._videos[key]
        if encoder is not None and encoder.bytes >= self.video_mb * 1024**2:
            encoder.close()
            encoder = None
            counter.advance()
        if encoder is None:
            path = self.tmp / VIDEO_PATH.format(video_key=key, chunk_index=counter.chunk, file_index=counter.file)
            height, width, _ = self.features[key]["shape"]
            encoder = VideoEncoder(path, self.fps, width, height, self.video)
            self._videos[key] = (counter, encoder)
        start = encoder.num_frames
        encoder.add(frames)
        return {
            f"videos/{key}/chunk_index": counter.chunk,
            f"videos/{key}/file_index": counter.file,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": encoder.num_frames / self.fps,
        }

    # --- finalize ---
    def _video_info(self, encoder: VideoEncoder) -> dict[str, Any]:
        return {
            "video.height": encoder.stream.height,
            "video.width": encoder.stream.width,
            "video.codec": av.codec.Codec(encoder.codec, "w").canonical_name,
            "video.pix_fmt": self.video.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": self.fps,
            "video.channels": 3,
            "has_audio": False,
        }

    def finalize(self, extra_meta: dict[str, Any] | None = None) -> Path:
        """Close all files, write the metadata, and move the dataset into place; returns its root.

        `extra_meta` maps file names to JSON-able objects written under `meta/` (e.g. how the data was collected);
        LeRobot ignores files it does not know.
        """
        if self.tmp is None:
            raise DatasetError("writer is already finalized")
        extra_meta = extra_meta or {}
        for name in extra_meta:
            if "/" in name or not name.endswith(".json") or name in ("info.json", "stats.json"):
                raise DatasetError(f"extra metadata file name {name!r} must be a new plain .json file name")
        if not self.episodes:
            self.abort()
            raise DatasetError(f"no episodes were added to {self.root}")
        if self._data_writer is not None:
            self._data_writer.close()
        features = {k: dict(v) for k, v in self.features.items()}
        for key, (_, encoder) in self._videos.items():
            if encoder is not None:
                encoder.close()
                features[key]["info"] = self._video_info(encoder)
        rows = []
        for row, stats in zip(self.episodes, self.episode_stats, strict=True):
            flat = {f"stats/{k}/{s}": np.asarray(v).tolist() for k, fields in stats.items() for s, v in fields.items()}
            rows.append({**row, **flat, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        episodes_path = self.tmp / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), episodes_path, compression="snappy")
        tasks = pa.table(
            {"task_index": pa.array(list(self.tasks.values()), pa.int64()), "__index_level_0__": list(self.tasks)}
        )
        tasks = tasks.replace_schema_metadata({b"pandas": _pandas_index_metadata()})
        pq.write_table(tasks, self.tmp / TASKS_PATH)
        stats = aggregate_stats(self.episode_stats)
        (self.tmp / STATS_PATH).write_text(json.dumps(stats_to_json(stats), indent=4) + "\n")
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        (self.tmp / INFO_PATH).write_text(json.dumps(info, indent=4, ensure_ascii=False) + "\n")
        for name, content in extra_meta.items():
            (self.tmp / "meta" / name).write_text(json.dumps(content, indent=2) + "\n")
        replace_directory(self.tmp, self.root)
        self.tmp = None
        return self.root

    def abort(self) -> None:
        """Drop everything written so far; the target directory is left untouched."""
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_writer = None
        for _, encoder in self._videos.values():
            if encoder is not None and not encoder.hung:  # a hung codec is abandoned, never touched again
                with contextlib.suppress(Exception):
                    encoder.container.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
