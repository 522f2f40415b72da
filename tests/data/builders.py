"""Small synthetic episodes and a v2.1-layout writer (LeRobot's older format, which smolvla only reads)."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from smolvla.data import DatasetWriter
from smolvla.data.meta import DEFAULT_FEATURES
from smolvla.data.stats import image_stats, vector_stats
from smolvla.data.video import VideoEncoder

FPS = 10
CAMERAS = {"observation.images.top": (48, 64), "observation.images.wrist": (32, 40)}
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "grip"]},
    "action": {"dtype": "float32", "shape": [3], "names": None},
    **{key: {"dtype": "video", "shape": [h, w, 3], "names": None} for key, (h, w) in CAMERAS.items()},
}
EPISODES = [(12, "pick up the cube"), (7, "open the drawer"), (9, "pick up the cube")]


def smooth_frames(length: int, height: int, width: int, seed: int) -> np.ndarray:
    """Moving colour gradients: realistic for a video codec (noise would not compress) and distinct per frame."""
    y, x = np.mgrid[0:height, 0:width]
    t = np.arange(length)[:, None, None]
    channels = [
        128 + 100 * np.sin(x[None] / 9.0 + t * 0.4 + seed),
        128 + 100 * np.cos(y[None] / 7.0 - t * 0.3 + seed),
        np.broadcast_to(40 + 15 * t + 10 * seed, (length, height, width)),
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def make_episodes(seed: int = 0, cameras=CAMERAS, episodes=EPISODES) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for e, (length, _) in enumerate(episodes):
        ep = {
            "observation.state": rng.normal(size=(length, 4)).astype(np.float32),
            "action": rng.normal(size=(length, 3)).astype(np.float32),
        }
        for c, (key, (h, w)) in enumerate(cameras.items()):
            ep[key] = smooth_frames(length, h, w, seed=3 * e + c)
        out.append(ep)
    return out


def write_v21(root: Path, episodes: list[dict[str, np.ndarray]], tasks: list[str]) -> None:
    """A dataset in LeRobot's v2.1 layout: one parquet and one mp4 per episode, JSON-lines metadata."""
    (root / "meta").mkdir(parents=True)
    task_ids = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    features = {**FEATURES, **DEFAULT_FEATURES}
    info = {
        "codebase_version": "v2.1",
        "robot_type": None,
        "total_episodes": len(episodes),
        "total_frames": sum(len(e["action"]) for e in episodes),
        "total_tasks": len(task_ids),
        "total_videos": len(episodes) * len(CAMERAS),
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    lines = {"episodes": [], "tasks": [], "episodes_stats": []}
    start = 0
    for e, (ep, task) in enumerate(zip(episodes, tasks, strict=True)):
        n = len(ep["action"])
        vec = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])  # noqa: E731
        table = pa.table(
            {
                "observation.state": vec(ep["observation.state"]),
                "action": vec(ep["action"]),
                "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, e)),
                "index": pa.array(start + np.arange(n)),
                "task_index": pa.array(np.full(n, task_ids[task])),
            }
        )
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key, (h, w) in CAMERAS.items():
            enc = VideoEncoder(root / f"videos/chunk-000/{key}/episode_{e:06d}.mp4", FPS, w, h)
            enc.add(ep[key])
            enc.close()
        stats = {k: vector_stats(ep[k]) for k in ("observation.state", "action")}
        stats.update({k: image_stats(ep[k]) for k in CAMERAS})
        lines["episodes"].append({"episode_index": e, "tasks": [task], "length": n})
        lines["episodes_stats"].append(
            {
                "episode_index": e,
                "stats": {k: {s: np.asarray(v).tolist() for s, v in f.items()} for k, f in stats.items()},
            }
        )
        start += n
    lines["tasks"] = [{"task_index": i, "task": t} for t, i in task_ids.items()]
    for name, rows in lines.items():
        (root / f"meta/{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_v30(root, episodes, tasks=None, features=FEATURES, **kwargs):
    """A LeRobot v3.0 dataset of `episodes` written by smolvla's own writer."""
    tasks = tasks or [t for _, t in EPISODES]
    with DatasetWriter(root, fps=FPS, features=features, **kwargs) as writer:
        for ep, task in zip(episodes, tasks, strict=True):
            writer.add_episode(ep, task)
    return root
