"""Cross-check a dataset before anything trains on it: one error naming the file and the inconsistency.

A dataset copied half-way, edited by hand or written by a killed process can be self-consistent enough to open and
still wrong: an episode missing from `meta/episodes` while `info.json` counts it (training silently skips it), an
`fps` that contradicts the timestamps (every action chunk then spans the wrong time), a deleted or truncated video
(found only mid-run, inside a data-loader worker). `verify_dataset` reads `meta/info.json`, the episode table, the
`index` / `episode_index` / `timestamp` columns of every data file and the header of every video file, which takes
seconds even for large datasets; `--dataset.verify=false` skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from smolvla.data.meta import EPISODES_DIR, INFO_PATH, DatasetError, DatasetMeta, column, load_meta, read_parquet
from smolvla.errors import ConfigError

TOLERANCE_S = 1e-4  # LeRobot's tolerance between a frame's timestamp and its index / fps


def verify_dataset(meta: DatasetMeta, videos: bool = True) -> None:
    """Raise `DatasetError` at the first inconsistency between info.json, the episode table, data and videos."""
    _check_episode_table(meta)
    _check_data_files(meta)
    if videos:
        _check_videos(meta)


def _check_episode_table(meta: DatasetMeta) -> None:
    info, episodes = meta.root / INFO_PATH, meta.root / EPISODES_DIR
    count = len(meta.episode_index)
    expected = np.arange(count, dtype=np.int64)
    if not np.array_equal(meta.episode_index, expected):
        gap = int(expected[np.argmax(meta.episode_index != expected)])
        raise DatasetError(f"{episodes}: episode {gap} is missing (indices must run 0..{count - 1} without gaps)")
    total = meta.info.get("total_episodes")
    if total is not None and int(total) != count:
        missing = f"episodes {count}..{int(total) - 1} are missing" if int(total) > count else "it lists more"
        raise DatasetError(f"{info} counts {total} episodes but {episodes} lists {count} ({missing})")
    frames = meta.info.get("total_frames")
    if frames is not None and int(frames) != meta.total_frames:
        raise DatasetError(f"{info} counts {frames} frames but the episodes in {episodes} sum to {meta.total_frames}")
    starts = np.concatenate([[0], np.cumsum(meta.length)[:-1]])
    if not np.array_equal(meta.from_index, starts):
        e = int(np.argmax(meta.from_index != starts))
        raise DatasetError(
            f"{episodes}: episode {e} starts at global index {meta.from_index[e]}, expected {starts[e]} "
            "(index ranges must be contiguous)"
        )


def _check_data_files(meta: DatasetMeta) -> None:
    """Every frame of every episode is in the data files, once, in order, `1 / fps` apart."""
    rows = {"index": [], "episode_index": [], "timestamp": []}
    origin = []
    for path in dict.fromkeys(meta.data_files):
        table = read_parquet(path, list(rows))
        for key in rows:
            rows[key].append(column(table, key, path))
        origin.append(np.full(table.num_rows, len(origin)))
    files = list(dict.fromkeys(meta.data_files))
    index, episode, timestamp = (np.concatenate(rows[k]) for k in ("index", "episode_index", "timestamp"))
    origin = np.concatenate(origin)
    order = np.argsort(index, kind="stable")
    index, episode, timestamp, origin = index[order], episode[order], timestamp[order], origin[order]
    wanted = np.repeat(meta.episode_index, meta.length)
    if len(index) != len(wanted) or not np.array_equal(index, np.arange(len(wanted))):
        have = np.unique(episode[~np.isin(episode, meta.episode_index)])
        detail = f"they hold frames of episodes {have[:5].tolist()} the episode table does not list" if len(have) else (
            f"they hold {len(index)} frames with indices {_span(index)}, the episode table lists {len(wanted)}"
        )  # fmt: skip
        raise DatasetError(f"{meta.root}/data: {detail}")
    if not np.array_equal(episode, wanted):
        row = int(np.argmax(episode != wanted))
        raise DatasetError(
            f"{files[origin[row]]}: frame {row} belongs to episode {episode[row]}, the episode table says {wanted[row]}"
        )
    step = 1.0 / meta.fps
    same_episode = episode[1:] == episode[:-1]
    dt = np.diff(timestamp.astype(np.float64))[same_episode]
    if len(dt) and np.abs(dt - step).max() > TOLERANCE_S:
        k = int(np.argmax(np.abs(dt - step)))
        row = int(np.flatnonzero(same_episode)[k])
        raise DatasetError(
            f"{files[origin[row]]}: timestamps of episode {episode[row]} advance by {dt[k]:.4f} s per frame (about "
            f"{1 / dt[k]:.3g} fps) but {meta.root / INFO_PATH} says fps={meta.fps} ({step:.4f} s)"
        )


def _span(index: np.ndarray) -> str:
    return f"{index.min()}..{index.max()}" if len(index) else "none"


def _check_videos(meta: DatasetMeta) -> None:
    """Every video exists, opens, and lasts until the last frame of every episode stored in it."""
    for camera, paths in meta.video_files.items():
        ends: dict[Path, tuple[float, int]] = {}
        for i, path in enumerate(paths):
            end = float(meta.video_from_s[camera][i]) + (int(meta.length[i]) - 1) / meta.fps
            if path not in ends or end > ends[path][0]:
                ends[path] = (end, int(meta.episode_index[i]))
        for path, (end, episode) in ends.items():
            duration = video_duration(path)
            if end > duration + TOLERANCE_S:
                raise DatasetError(
                    f"video {path} lasts {duration:.3f} s but episode {episode} needs frames up to {end:.3f} s "
                    "(truncated or replaced?)"
                )


def video_duration(path: Path) -> float:
    """Seconds from the first frame's start to the last frame's end, from the container's header."""
    if not path.is_file():
        raise DatasetError(f"missing video file {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1e6
            raise DatasetError(f"video {path} does not say how long it is")
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise DatasetError(f"cannot read video {path}: {e}") from e


@dataclass
class CheckDatasetConfig:
    """`smolvla check-dataset`: the checks `smolvla train` runs when it opens a dataset, alone."""

    root: str = ""  # a local LeRobot dataset directory
    videos: bool = True  # also open every video file (the slowest part)


def check_dataset(config: CheckDatasetConfig) -> str:
    """One line describing a consistent dataset; a `DatasetError` naming the first inconsistency otherwise."""
    if not config.root:
        raise ConfigError("set --root=<a local LeRobot dataset directory>")
    meta = load_meta(config.root)
    verify_dataset(meta, videos=config.videos)
    cameras = ", ".join(meta.camera_keys) or "no cameras"
    return (
        f"{meta.root}: consistent ({meta.version}, {len(meta.episode_index)} episodes, {meta.total_frames} frames, "
        f"{meta.fps} fps, {len(meta.tasks)} tasks, {cameras})"
    )
