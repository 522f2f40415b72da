"""Metadata of a LeRobot dataset on disk (format v3.0, and v2.1 read-only), validated with clear errors.

v3.0 packs many episodes per file: `meta/info.json`, `meta/tasks.parquet` (task string as the pandas index,
`task_index` column), `meta/episodes/chunk-XXX/file-XXX.parquet` (one row per episode: length, global index range,
data file, per-camera video file and start time), `data/chunk-XXX/file-XXX.parquet`, and
`videos/<camera>/chunk-XXX/file-XXX.mp4` with episodes back to back. v2.1 has one parquet and one mp4 per episode and
JSON-lines metadata (`episodes.jsonl`, `tasks.jsonl`, `episodes_stats.jsonl`). Both load into one `DatasetMeta`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.data.stats import aggregate_stats
from smolvla.errors import SmolVLAError

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
SUPPORTED_VERSIONS = ("v3.0", "v2.1")
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


class DatasetError(SmolVLAError, ValueError):
    """A dataset directory is missing files, has corrupt files, or its contents contradict `meta/info.json`."""


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n} is not valid JSON: {e}") from e
    return rows


def read_parquet(path: Path, columns: list[str] | None = None):
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"cannot read parquet file {path}: {e}") from e
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DatasetError(f"{path} lacks columns {missing}; it has {table.column_names}")
    return table


def column(table, name: str, path: Path, shape: list[int] | None = None) -> np.ndarray:
    """A parquet column as numpy: scalars (N,), fixed or variable lists checked against `shape` → (N, *shape)."""
    if name not in table.column_names:
        raise DatasetError(f"{path} has no column {name!r}; it has {table.column_names}")
    col = table.column(name).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        per_row = flat.size // max(len(col), 1)
        expected = int(np.prod(shape)) if shape else per_row
        lengths = np.diff(col.offsets.to_numpy()) if not pa.types.is_fixed_size_list(col.type) else None
        if per_row != expected or (lengths is not None and (lengths != expected).any()):
            raise DatasetError(
                f"{path}: column {name!r} has {per_row} values per row, info.json declares shape {shape}"
            )
        return flat.reshape(len(col), *(shape or [per_row]))
    values = col.to_numpy(zero_copy_only=False)
    if shape is not None and int(np.prod(shape)) != 1:
        raise DatasetError(f"{path}: column {name!r} holds scalars, info.json declares shape {shape}")
    return values


@dataclass
class DatasetMeta:
    """Everything about a dataset except the frames: features, fps, tasks, episode layout, statistics."""

    root: Path
    info: dict[str, Any]
    tasks: list[str]
    episode_index: np.ndarray  # (E,) int64, ascending
    length: np.ndarray  # (E,) frames per episode
    from_index: np.ndarray  # (E,) global index of each episode's first frame
    episode_tasks: list[list[str]]
    data_files: list[Path]  # per episode
    video_files: dict[str, list[Path]] = field(default_factory=dict)  # camera → per-episode file
    video_from_s: dict[str, np.ndarray] = field(default_factory=dict)  # camera → per-episode start time in file
    stats: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in ("image", "video")]

    @property
    def total_frames(self) -> int:
        return int(self.length.sum())

    def episode_position(self, episode: int) -> int:
        pos = int(np.searchsorted(self.episode_index, episode))
        if pos >= len(self.episode_index) or self.episode_index[pos] != episode:
            raise DatasetError(f"{self.root} has no episode {episode}; it has episodes 0..{len(self.length) - 1}")
        return pos


def _check_info(root: Path, info: Any) -> dict[str, Any]:
    path = root / INFO_PATH
    if not isinstance(info, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise DatasetError(
            f"{path}: codebase_version {version!r} is not supported; smolvla reads {list(SUPPORTED_VERSIONS)} "
            "(convert older datasets with LeRobot's converters)"
        )
    for key in ("fps", "features"):
        if key not in info:
            raise DatasetError(f"{path} lacks {key!r}")
    for name, spec in info["features"].items():
        if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
            raise DatasetError(f"{path}: feature {name!r} must have 'dtype' and 'shape', got {spec!r}")
        if spec["dtype"] in ("image", "video") and len(spec["shape"]) != 3:
            raise DatasetError(f"{path}: camera feature {name!r} must have shape [H, W, 3], got {spec['shape']}")
    return info


def _stats_from_json(raw: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.asarray(v, dtype=np.float64) for s, v in fields.items()} for k, fields in raw.items()}


def read_stats(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """A `meta/stats.json`-format file (feature → statistic → values), e.g. statistics fixed across runs."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise DatasetError(f"{path} must map each feature to its statistics ({{'action': {{'mean': [...]}}}})")
    try:
        return _stats_from_json(raw)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path} holds a statistic that is not numeric: {e}") from e


def load_meta(root: str | Path) -> DatasetMeta:
    """Read and validate the metadata of a local LeRobot dataset (v3.0 or v2.1)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory")
    info = _check_info(root, read_json(root / INFO_PATH))
    meta = _load_v30(root, info) if info["codebase_version"] == "v3.0" else _load_v21(root, info)
    order = np.argsort(meta.episode_index, kind="stable")
    if not (order == np.arange(len(order))).all():
        raise DatasetError(f"{root}: episode rows are not ordered by episode_index")
    return meta


def _load_v30(root: Path, info: dict[str, Any]) -> DatasetMeta:
    tasks_path = root / TASKS_PATH
    table = read_parquet(tasks_path, ["task_index"])
    text_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text_col is None:
        raise DatasetError(f"{tasks_path} has no task string column ('task' or the pandas index)")
    task_index = column(table, "task_index", tasks_path)
    texts = table.column(text_col).to_pylist()
    tasks = [""] * len(texts)
    for i, text in zip(task_index.tolist(), texts, strict=True):
        tasks[i] = text
    episode_files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise DatasetError(f"{root / EPISODES_DIR} has no episode metadata files (chunk-*/file-*.parquet)")

    episodes = pa.concat_tables([read_parquet(p) for p in episode_files], promote_options="permissive")
    where = root / EPISODES_DIR
    needed = ["episode_index", "tasks", "length", "dataset_from_index", "data/chunk_index", "data/file_index"]
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    for key in video_keys:
        needed += [f"videos/{key}/{name}" for name in ("chunk_index", "file_index", "from_timestamp")]
    missing = [c for c in needed if c not in episodes.column_names]
    if missing:
        raise DatasetError(f"{where}: episode metadata lacks columns {missing}")
    order = np.argsort(column(episodes, "episode_index", where), kind="stable")
    episodes = episodes.take(order)
    col = lambda name: column(episodes, name, where)  # noqa: E731
    data_path = info.get("data_path", DATA_PATH)
    data_files = [
        root / data_path.format(chunk_index=int(c), file_index=int(f))
        for c, f in zip(col("data/chunk_index"), col("data/file_index"), strict=True)
    ]
    video_path = info.get("video_path") or VIDEO_PATH
    video_files, video_from = {}, {}
    for key in video_keys:
        video_files[key] = [
            root / video_path.format(video_key=key, chunk_index=int(c), file_index=int(f))
            for c, f in zip(col(f"videos/{key}/chunk_index"), col(f"videos/{key}/file_index"), strict=True)
        ]
        video_from[key] = col(f"videos/{key}/from_timestamp").astype(np.float64)
    stats_path = root / STATS_PATH
    return DatasetMeta(
        root=root,
        info=info,
        tasks=tasks,
        episode_index=col("episode_index").astype(np.int64),
        length=col("length").astype(np.int64),
        from_index=col("dataset_from_index").astype(np.int64),
        episode_tasks=episodes.column("tasks").to_pylist(),
        data_files=data_files,
        video_files=video_files,
        video_from_s=video_from,
        stats=_stats_from_json(read_json(stats_path)) if stats_path.is_file() else None,
    )


def _load_v21(root: Path, info: dict[str, Any]) -> DatasetMeta:
    rows = read_jsonl(root / "meta/tasks.jsonl")
    tasks = [""] * len(rows)
    for row in rows:
        tasks[int(row["task_index"])] = row["task"]
    episodes = sorted(read_jsonl(root / "meta/episodes.jsonl"), key=lambda r: r["episode_index"])
    chunks_size = int(info.get("chunks_size", 1000))
    index = np.array([e["episode_index"] for e in episodes], dtype=np.int64)
    length = np.array([e["length"] for e in episodes], dtype=np.int64)
    data_path = info.get("data_path", V21_DATA_PATH)
    video_path = info.get("video_path") or V21_VIDEO_PATH
    data_files = [root / data_path.format(episode_chunk=int(e) // chunks_size, episode_index=int(e)) for e in index]
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    video_files = {
        key: [
            root / video_path.format(episode_chunk=int(e) // chunks_size, video_key=key, episode_index=int(e))
            for e in index
        ]
        for key in video_keys
    }
    stats = None
    if (root / "meta/episodes_stats.jsonl").is_file():
        per_episode = [_stats_from_json(r["stats"]) for r in read_jsonl(root / "meta/episodes_stats.jsonl")]
        stats = aggregate_stats(per_episode)
    elif (root / STATS_PATH).is_file():
        stats = _stats_from_json(read_json(root / STATS_PATH))
    return DatasetMeta(
        root=root,
        info=info,
        tasks=tasks,
        episode_index=index,
        length=length,
        from_index=np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64),
        episode_tasks=[list(e.get("tasks", [])) for e in episodes],
        data_files=data_files,
        video_files=video_files,
        video_from_s={key: np.zeros(len(index)) for key in video_keys},
        stats=stats,
    )
