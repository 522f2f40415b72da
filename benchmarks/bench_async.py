"""Synchronous vs asynchronous execution of chunk-50 policies in Meta-World at real inference delays: plain async,
async + guided real-time chunking, async + training-time RTC, each with and without pipelined requests.

    .venv/bin/python benchmarks/bench_async.py [--tasks door-open,window-open,plate-slide] [--episodes 10]
        [--delays_ms 0,50,100,200,300] [--modes sync,async,guided,trained] [--max_in_flight 3] [--threshold 0.8]
        [--policy DIR] [--trained_policy DIR] [--dataset ROOT,...] [--out outputs/async-bench]

Policies (the recipe in RECIPE): tiny SmolVLA, chunk 50 (SmolVLA's length), n_action_steps 25, 64² images from two
cameras, 1 800 steps × 32 on the four demo tasks, 30 scripted demos each; the second one identical but trained with
`--policy.rtc_training_max_delay=25` (up to 300 ms at 80 Hz). Trained here on first use, from `--dataset` or from
datasets collected here (`bench_continual.collect_tasks`); `--policy` / `--trained_policy` use existing ones.

Each policy is served by an in-process `smolvla serve` on loopback and driven by `RobotClient` on `MetaWorldRobot`.
The simulator clock advances while the policy "thinks": a chunk requested at step t lands at t + delay · 80 Hz, so
the delay costs what it would cost on a robot, independently of this machine's speed; "server ms" is what a chunk
really cost here. Modes (all async ones ask when at most `--threshold` × 50 actions remain, i.e. every 10 steps):

- sync: ask when the queue is empty, stand still until the chunk lands, execute n_action_steps (25) of it;
- async: keep moving, merge overlapping steps by LeRobot's weighted average;
- latest: async, the new chunk replaces the queued steps (no blending: the freshest plan, and the seam RTC removes);
- guided: async, the request carries the queued actions and the chunk is guided to continue them (arXiv 2506.07339);
- trained: async, the actions that execute during the delay are given to the RTC-trained policy (arXiv 2512.05964);
- with `--max_in_flight` k > 1 (pipelining) the async modes keep asking every 10 steps while earlier requests are
  still computed; it changes anything only where the delay exceeds that interval (here above 125 ms).

Per setting: success, task time (robot seconds, successful episodes), stall steps, mean |Δaction| at chunk joins vs
within chunks, server ms per chunk, requests in flight. Prints a table, writes benchmarks/results/async_<device>.json
and <out>/async_delay.png; finished episodes are kept in <out>/episodes.jsonl and reused by reruns.
"""

from __future__ import annotations

import argparse
import json
import math
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
from benchmarks.report import report

FPS = 80  # Meta-World's control rate
MODES = {  # mode -> (ClientConfig fields, which policy)
    "sync": ({"mode": "sync"}, "plain"),
    "async": ({"mode": "async"}, "plain"),
    "latest": ({"mode": "async", "aggregate": "latest"}, "plain"),
    "guided": ({"mode": "async", "rtc": "guided"}, "plain"),
    "trained": ({"mode": "async", "rtc": "trained"}, "trained"),
}
RECIPE = ["--batch_size=32", "--seed=0", "--num_workers=1", "--log_freq=100", "--val_freq=0", "--keep_last=1",
          "--dataset.cache_frames=true", "--dataset.val_fraction=0.1", "--steps=1800", "--save_freq=600",
          "--policy.optimizer_lr=1e-3", "--policy.scheduler_warmup_steps=90", "--policy.scheduler_decay_steps=1800",
          "--policy.scheduler_decay_lr=5e-5", "--policy.preset=tiny", "--policy.image_size=64",
          "--policy.chunk_size=50", "--policy.n_action_steps=25", "--policy.freeze_vision_encoder=false",
          "--policy.train_expert_only=false"]  # fmt: skip
TRAINED_DELAY = 25  # control steps: 312 ms at 80 Hz
SEED = 5000  # episode starts disjoint from collection (0...) and `smolvla eval` (1000...)


def train_policy(roots: list[str], out: Path, rtc_delay: int) -> Path:
    from smolvla.train.checkpoint import LAST, checkpoints_dir
    from smolvla.train.config import TrainConfig
    from smolvla.train.trainer import train

    final = checkpoints_dir(out) / "001800" / "pretrained_model"
    if final.is_dir():
        return final
    resume = (checkpoints_dir(out) / LAST).exists()
    flags = [f"--dataset.root={','.join(roots)}", f"--output_dir={out}", *RECIPE,
             f"--policy.rtc_training_max_delay={rtc_delay}", f"--resume={resume}"]  # fmt: skip
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


def run_setting(client, info, task: str, mode: str, k: int, delay_ms: float, episodes: int, threshold: float):
    from smolvla.serve.robot import ClientConfig, RobotClient, remote_source
    from smolvla.sim.robot import MetaWorldRobot

    cameras = {f.name: f.name.rsplit(".", 1)[-1] for f in info.features if f.name.startswith("observation.images.")}
    size = next(f.shape[0] for f in info.features if f.name in cameras)
    fields, _ = MODES[mode]
    config = ClientConfig(**fields, chunk_threshold=threshold, max_in_flight=k, delay_s=delay_ms / 1000,
                          max_steps=500)  # fmt: skip
    runner = RobotClient(remote_source(client, rtc=config.rtc), config, chunk_size=info.chunk_size,
                         rtc_training_max_delay=info.rtc_training_max_delay)  # fmt: skip
    robot = MetaWorldRobot(task, cameras, size, max_steps=500)
    records = []
    try:
        for i in range(episodes):
            started = time.perf_counter()
            stats = runner.run_episode(robot, seed=SEED + i)
            records.append({
                "task": task, "mode": mode, "k": k, "delay_ms": delay_ms, "episode": i, "success": stats.success,
                "seconds": stats.seconds, "steps": stats.steps, "stalls": stats.stalls, "requests": stats.requests,
                "boundary_jump": stats.boundary_jump, "within_jump": stats.within_jump,
                "server_ms": float(np.mean(stats.latency_ms)), "max_in_flight": stats.max_in_flight,
                "dropped": stats.dropped, "wall_s": time.perf_counter() - started,
            })  # fmt: skip
    finally:
        robot.close()
    return records


def settings(modes: list[str], delays: list[float], k: int, threshold: float, chunk: int) -> list[tuple]:
    """(mode, k, delay) cells: every mode without pipelining, and the async modes with it wherever the delay
    exceeds the request interval (elsewhere at most one request is ever in flight: the same run)."""
    interval = chunk - math.floor(threshold * chunk)
    cells = [(m, 1, d) for d in delays for m in modes]
    if k > 1:
        cells += [(m, k, d) for d in delays for m in modes if m != "sync" and math.ceil(d / 1000 * FPS) > interval]
    return cells


def summarize(records: list[dict], cells: list[tuple]) -> list[dict]:
    rows = []
    for mode, k, delay in sorted(cells, key=lambda c: (c[2], list(MODES).index(c[0]), c[1])):
        mine = [r for r in records if (r["mode"], r["k"], r["delay_ms"]) == (mode, k, delay)]
        won = [r for r in mine if r["success"]]
        rows.append({
            "mode": mode if k == 1 else f"{mode} k={k}", "delay_ms": delay, "episodes": len(mine),
            "success": round(float(np.mean([r["success"] for r in mine])), 3),
            "task_s": round(float(np.mean([r["seconds"] for r in won])), 2) if won else None,
            "stalls": round(float(np.mean([r["stalls"] for r in mine])), 1),
            "requests": round(float(np.mean([r["requests"] for r in mine])), 1),
            "boundary_jump": round(float(np.mean([r["boundary_jump"] for r in mine])), 4),
            "within_jump": round(float(np.mean([r["within_jump"] for r in mine])), 4),
            "server_ms": round(float(np.mean([r["server_ms"] for r in mine])), 1),
            "in_flight": max(r["max_in_flight"] for r in mine),
        })  # fmt: skip
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smolvla.atomic import save_figure

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = (("success", "success (%)", 100), ("task_s", "task time, successes (s)", 1),
              ("boundary_jump", "mean |Δaction| at chunk joins", 1),
              ("server_ms", "server ms per chunk", 1))  # fmt: skip
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for variant in dict.fromkeys(r["mode"] for r in rows):
            mine = [r for r in rows if r["mode"] == variant and r[key] is not None]
            style = "--" if " k=" in variant else "-"
            color = f"C{list(MODES).index(variant.split()[0])}"
            ax.plot([r["delay_ms"] for r in mine], [scale * r[key] for r in mine], style, color=color, marker="o",
                    label=variant)  # fmt: skip
        ax.set_xlabel("inference delay (ms of robot time, 80 Hz control)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def main() -> None:
    from smolvla.continual.config import ContinualConfig
    from smolvla.flags import load_config_file
    from smolvla.serve.client import PolicyClient
    from smolvla.serve.server import PolicyServer, ServeConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default=None, help="a chunk-50 pretrained_model directory; default: RECIPE")
    parser.add_argument("--trained_policy", default=None, help="the same trained with rtc_training_max_delay")
    parser.add_argument("--dataset", default=None, help="dataset roots to train on (comma-separated)")
    parser.add_argument("--tasks", default="door-open,window-open,plate-slide")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task and setting")
    parser.add_argument("--delays_ms", default="0,50,100,200,300")
    parser.add_argument("--modes", default="sync,async,latest,guided,trained")
    parser.add_argument("--max_in_flight", type=int, default=3, help="k of the pipelined runs (1: none)")
    parser.add_argument("--threshold", type=float, default=0.8, help="async: ask when <= threshold × chunk remain")
    parser.add_argument("--out", default="outputs/async-bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, modes = args.tasks.split(","), args.modes.split(",")
    delays = [float(d) for d in args.delays_ms.split(",")]

    policies = {"plain": args.policy, "trained": args.trained_policy}
    if None in policies.values():
        roots = args.dataset.split(",") if args.dataset else None
        if roots is None:
            continual = ContinualConfig.from_mapping(load_config_file(CONFIG))
            collect_tasks(continual, 30, 64, ("corner2", "gripperPOV"))
            roots = [t.root for t in continual.tasks]
        for name, delay in (("plain", 0), ("trained", TRAINED_DELAY)):
            policies[name] = policies[name] or train_policy(roots, out / f"policy-{name}", delay)
    servers = {name: PolicyServer(ServeConfig(policy_path=str(path), port=0)) for name, path in policies.items()}
    clients = {name: PolicyClient(address=f"127.0.0.1:{server.start()}") for name, server in servers.items()}
    infos = {name: client.info() for name, client in clients.items()}
    cells = settings(modes, delays, args.max_in_flight, args.threshold, infos["plain"].chunk_size)

    log = out / "episodes.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    done = {(r["task"], r["mode"], r["k"], r["delay_ms"]) for r in records}
    try:
        for mode, k, delay in cells:
            for task in tasks:
                if (task, mode, k, delay) in done:
                    continue
                name = MODES[mode][1]
                new = run_setting(clients[name], infos[name], task, mode, k, delay, args.episodes, args.threshold)
                with log.open("a") as f:  # one setting at a time: an interrupted run loses at most one
                    f.writelines(json.dumps(r) + "\n" for r in new)
                records += new
                print(f"{task:12s} {mode:7s} k={k} {delay:5.0f} ms: success {np.mean([r['success'] for r in new]):.2f} "
                      f"({sum(r['wall_s'] for r in new):.0f} s)", flush=True)  # fmt: skip
    finally:
        for name in servers:
            clients[name].close()
            servers[name].stop()
    records = [r for r in records if r["task"] in tasks]
    rows = summarize(records, cells)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "policies": {name: str(path) for name, path in policies.items()},
        "tasks": tasks,
        "episodes_per_setting_per_task": args.episodes,
        "chunk_size": infos["plain"].chunk_size,
        "n_action_steps": infos["plain"].n_action_steps,
        "rtc_training_max_delay": infos["trained"].rtc_training_max_delay,
        "threshold": args.threshold,
        "control_hz": FPS,
        "plot": str(plot(rows, out / "async_delay.png")),
    }
    columns = {
        "mode": "mode", "delay ms": "delay_ms", "episodes": "episodes", "success": "success",
        "task s (successes)": "task_s", "stall steps": "stalls", "requests": "requests",
        "jump at joins": "boundary_jump", "jump within": "within_jump", "server ms": "server_ms",
        "in flight": "in_flight",
    }  # fmt: skip
    report(f"async_{machine['device']}", machine, rows, columns)


if __name__ == "__main__":
    main()
