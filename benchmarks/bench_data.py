"""Dataset throughput: writing a LeRobot v3.0 dataset and reading frames back (sequential, random, DataLoader).

    .venv/bin/python benchmarks/bench_data.py [--frames 600] [--sizes 128x128,480x640] [--threads 2]

Each sample holds 2 video cameras (AV1, LeRobot's encoder settings), the state, and a 50-step action chunk, as a
SmolVLA training sample does. Sequential = index order (each frame decoded once); random = shuffled indices (a seek
per camera per sample; g=2 keyframes keep that short); loader = DataLoader, 2 workers, shuffled, batch 8.
Writes benchmarks/results/data_cpu.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report
from smolvla.data import DatasetWriter, LeRobotDataset, chunk_delta_timestamps
from tests.data.builders import smooth_frames

FPS = 30


def write(root: Path, frames: int, height: int, width: int) -> float:
    cams = ("observation.images.front", "observation.images.wrist")
    features = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": None},
        "action": {"dtype": "float32", "shape": [6], "names": None},
        **{c: {"dtype": "video", "shape": [height, width, 3], "names": None} for c in cams},
    }
    per_episode = 100
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(frames // per_episode):  # made before the clock starts: only writing is timed
        ep = {k: rng.normal(size=(per_episode, 6)).astype(np.float32) for k in ("observation.state", "action")}
        episodes.append(
            ep | {cam: smooth_frames(per_episode, height, width, seed=2 * e + i) for i, cam in enumerate(cams)}
        )
    start = time.perf_counter()
    with DatasetWriter(root, fps=FPS, features=features) as writer:
        for e, ep in enumerate(episodes):
            writer.add_episode(ep, f"task {e % 3}")
    return frames / (time.perf_counter() - start)


def read_rate(ds: LeRobotDataset, order: list[int]) -> float:
    start = time.perf_counter()
    for i in order:
        ds[i]
    return len(order) / (time.perf_counter() - start)


def loader_rate(ds: LeRobotDataset, samples: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, persistent_workers=False)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["task"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--sizes", default="128x128,480x640")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            write_fps = write(root, args.frames, height, width)
            ds = LeRobotDataset(root, delta_timestamps=chunk_delta_timestamps(50, FPS))
            sequential = read_rate(ds, list(range(len(ds))))
            ds = LeRobotDataset(root, delta_timestamps=chunk_delta_timestamps(50, FPS))
            random_order = np.random.default_rng(0).permutation(len(ds))[: min(len(ds), 300)].tolist()
            random = read_rate(ds, random_order)
            loader = loader_rate(LeRobotDataset(root, delta_timestamps=chunk_delta_timestamps(50, FPS)), 300)
            mb = sum(f.stat().st_size for f in root.rglob("*.mp4")) / 1e6
        rows.append(
            {
                "size": f"{height}x{width}",
                "cameras": 2,
                "frames": args.frames,
                "write_samples_per_s": round(write_fps, 1),
                "sequential_samples_per_s": round(sequential, 1),
                "random_samples_per_s": round(random, 1),
                "loader_2_workers_samples_per_s": round(loader, 1),
                "video_mb": round(mb, 2),
            }
        )
        print(rows[-1], flush=True)
    machine = {"threads": args.threads, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    columns = {
        "size": "size",
        "write (samples/s)": "write_samples_per_s",
        "sequential (samples/s)": "sequential_samples_per_s",
        "random (samples/s)": "random_samples_per_s",
        "DataLoader 2 workers": "loader_2_workers_samples_per_s",
        "mp4 MB": "video_mb",
    }
    report("data_cpu", machine, rows, columns)


if __name__ == "__main__":
    main()
