"""Synchronous vs asynchronous vs asynchronous + real-time chunking execution in Meta-World, under an inference delay.

    .venv/bin/python benchmarks/bench_async.py [--policy DIR] [--tasks window-open,plate-slide] [--episodes 5]
        [--delays_ms 0,25,50,100] [--modes sync,async,rtc] [--out outputs/async-bench]

The policy is served by an in-process `smolvla serve` on loopback and driven by `RobotClient` on `MetaWorldRobot`.
The simulator clock advances while the policy "thinks": a chunk requested at step t lands at t + delay · 80 Hz, so
the delay costs what it would cost on a robot, independently of this machine's speed. Per setting: success rate,
task time (seconds of robot time, successful episodes), stall steps (empty queue), mean |Δaction| at chunk
boundaries vs within chunks. Modes:

- sync: ask when the queue is empty, stand still until the chunk lands, execute n_action_steps of it;
- async: ask when at most `--threshold` × chunk actions remain, keep moving, merge (LeRobot's weighted average);
- latest: async, the new chunk simply replaces the queued steps (no blending: the seam RTC is meant to remove);
- rtc: async, and the request carries the queued actions so the chunk continues them (guided inpainting).

Default policy: the reflow benchmark's 1-RF teacher (trained there, or here on first use; four tasks, chunk 10,
n_action_steps 5, 64² images from two cameras). Prints a table, writes benchmarks/results/async_<device>.json and
<out>/async_delay.png; finished episodes are kept in <out>/episodes.jsonl and reused by reruns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_continual import CONFIG, collect_tasks
from benchmarks.bench_reflow import train_teacher
from benchmarks.report import report

MODES = {  # mode name -> ClientConfig fields
    "sync": {"mode": "sync"},
    "async": {"mode": "async"},
    "latest": {"mode": "async", "aggregate": "latest"},
    "rtc": {"mode": "async", "rtc": True},
}
SEED = 5000  # episode starts disjoint from collection (0...) and `smolvla eval` (1000...)


def run_setting(client, info, task: str, mode: str, delay_ms: float, episodes: int, threshold: float) -> list[dict]:
    from smolvla.serve.robot import ClientConfig, RobotClient, remote_source
    from smolvla.sim.robot import MetaWorldRobot

    cameras = {f.name: f.name.rsplit(".", 1)[-1] for f in info.features if f.name.startswith("observation.images.")}
    size = next(f.shape[0] for f in info.features if f.name in cameras)
    config = ClientConfig(**MODES[mode], chunk_threshold=threshold, n_action_steps=info.n_action_steps,
                          delay_s=delay_ms / 1000, max_steps=500)  # fmt: skip
    runner = RobotClient(remote_source(client), config)
    robot = MetaWorldRobot(task, cameras, size, max_steps=500)
    records = []
    try:
        for i in range(episodes):
            started = time.perf_counter()
            stats = runner.run_episode(robot, seed=SEED + i)
            records.append({
                "task": task, "mode": mode, "delay_ms": delay_ms, "episode": i, "success": stats.success,
                "seconds": stats.seconds, "steps": stats.steps, "stalls": stats.stalls, "requests": stats.requests,
                "boundary_jump": stats.boundary_jump, "within_jump": stats.within_jump,
                "server_ms": float(np.mean(stats.latency_ms)), "wall_s": time.perf_counter() - started,
            })  # fmt: skip
    finally:
        robot.close()
    return records


def summarize(records: list[dict], modes: list[str], delays: list[float]) -> list[dict]:
    rows = []
    for delay in delays:
        for mode in modes:
            mine = [r for r in records if r["mode"] == mode and r["delay_ms"] == delay]
            won = [r for r in mine if r["success"]]
            rows.append({
                "mode": mode, "delay_ms": delay, "episodes": len(mine),
                "success": round(np.mean([r["success"] for r in mine]), 3),
                "task_s": round(float(np.mean([r["seconds"] for r in won])), 2) if won else None,
                "stalls": round(float(np.mean([r["stalls"] for r in mine])), 1),
                "requests": round(float(np.mean([r["requests"] for r in mine])), 1),
                "boundary_jump": round(float(np.mean([r["boundary_jump"] for r in mine])), 4),
                "within_jump": round(float(np.mean([r["within_jump"] for r in mine])), 4),
                "server_ms": round(float(np.mean([r["server_ms"] for r in mine])), 1),
            })  # fmt: skip
    return rows


def plot(rows: list[dict], modes: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smolvla.atomic import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("success", "success (%)", 100), ("task_s", "task time, successes (s)", 1),
              ("boundary_jump", "mean |Δaction| at chunk joins", 1))  # fmt: skip
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for mode in modes:
            mine = [r for r in rows if r["mode"] == mode and r[key] is not None]
            ax.plot([r["delay_ms"] for r in mine], [scale * r[key] for r in mine], marker="o", label=mode)
        ax.set_xlabel("inference delay (ms of robot time, 80 Hz control)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return save_figure(fig, path)


def main() -> None:
    from smolvla.continual.config import ContinualConfig
    from smolvla.flags import load_config_file
    from smolvla.serve.client import PolicyClient
    from smolvla.serve.server import PolicyServer, ServeConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default=None, help="a pretrained_model directory; default: the reflow teacher")
    parser.add_argument("--tasks", default="window-open,plate-slide")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per task and setting")
    parser.add_argument("--delays_ms", default="0,25,50,100")
    parser.add_argument("--modes", default="sync,async,latest,rtc")
    parser.add_argument("--threshold", type=float, default=0.5, help="async: ask when <= threshold × chunk remain")
    parser.add_argument("--out", default="outputs/async-bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, modes = args.tasks.split(","), args.modes.split(",")
    delays = [float(d) for d in args.delays_ms.split(",")]

    policy = args.policy
    if policy is None:
        continual = ContinualConfig.from_mapping(load_config_file(CONFIG))
        collect_tasks(continual, 30, 64, ("corner2", "gripperPOV"))
        policy = train_teacher([t.root for t in continual.tasks], Path("outputs/reflow-bench/teacher"))
    server = PolicyServer(ServeConfig(policy_path=str(policy), port=0))
    client = PolicyClient(address=f"127.0.0.1:{server.start()}")
    info = client.info()

    log = out / "episodes.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["task"], r["mode"], r["delay_ms"]) for r in records}
    try:
        for delay in delays:
            for mode in modes:
                for task in tasks:
                    if (task, mode, delay) in done:
                        continue
                    new = run_setting(client, info, task, mode, delay, args.episodes, args.threshold)
                    with log.open("a") as f:  # one setting at a time: an interrupted run loses at most one
                        f.writelines(json.dumps(r) + "\n" for r in new)
                    records += new
                    won = np.mean([r["success"] for r in new])
                    print(f"{task:12s} {mode:5s} {delay:5.0f} ms: success {won:.2f} "
                          f"({sum(r['wall_s'] for r in new):.0f} s)", flush=True)  # fmt: skip
    finally:
        client.close()
        server.stop()
    records = [r for r in records if r["task"] in tasks]
    rows = summarize(records, modes, delays)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "policy": str(policy),
        "tasks": tasks,
        "episodes_per_setting_per_task": args.episodes,
        "chunk_size": info.chunk_size,
        "n_action_steps": info.n_action_steps,
        "threshold": args.threshold,
        "control_hz": 80,
        "plot": str(plot(rows, modes, out / "async_delay.png")),
    }
    columns = {
        "mode": "mode", "delay ms": "delay_ms", "episodes": "episodes", "success": "success",
        "task s (successes)": "task_s", "stall steps": "stalls", "requests": "requests",
        "jump at joins": "boundary_jump", "jump within": "within_jump", "server ms": "server_ms",
    }  # fmt: skip
    report(f"async_{machine['device']}", machine, rows, columns)


if __name__ == "__main__":
    main()
