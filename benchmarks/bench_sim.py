"""Meta-World simulation throughput: rendering speed per setting, and expert demonstrations per minute.

    .venv/bin/python benchmarks/bench_sim.py [--episodes 50] [--workers 1,2]

Render rows: one camera, frames/s of `MetaWorldEnv` observations (physics step + render) under the "fast" and
"lerobot" settings. Collect rows: `smolvla collect` end to end (expert rollouts with 2 cameras at 128 px, staging,
AV1 encoding, dataset write) for `--episodes` episodes spread over MT10, with 1 and 2 worker processes.
Writes benchmarks/results/sim_cpu.json and prints a markdown table.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report
from smolvla.sim.collect import CollectConfig, collect
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv
from smolvla.sim.tasks import MT10


def render_rate(config: MetaWorldConfig, steps: int = 100) -> float:
    with MetaWorldEnv(config) as env:
        env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(np.zeros(4, np.float32))
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    rows = []
    for render, size in (("fast", 128), ("lerobot", 128), ("fast", 480), ("lerobot", 480)):
        config = MetaWorldConfig(task="reach", cameras=("corner2",), image_size=size, render=render)
        rate = render_rate(config)
        rows.append({"job": f"step + render 1 camera, {render}, {size} px", "rate": f"{rate:.0f} frames/s"})
        print(rows[-1])
    per_task = max(1, args.episodes // len(MT10))
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            env = MetaWorldConfig(task="mt10", cameras=("corner2", "gripperPOV"), image_size=128)
            config = CollectConfig(env=env, episodes_per_task=per_task, output_dir=f"{tmp}/mt10", num_workers=workers)
            start = time.perf_counter()
            collect(config, progress=False)
            elapsed = time.perf_counter() - start
        episodes = per_task * len(MT10)
        rows.append(
            {
                "job": f"collect {episodes} MT10 demos, 2 cameras 128 px, {workers} process(es)",
                "rate": f"{60 * episodes / elapsed:.1f} demos/min ({elapsed:.0f} s)",
                "demos_per_min": round(60 * episodes / elapsed, 1),
                "seconds": round(elapsed, 1),
            }
        )
        print(rows[-1])
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gl": "Mesa llvmpipe (EGL)"}
    report("sim_cpu", machine, rows, {"job": "job", "rate": "rate"})


if __name__ == "__main__":
    main()
