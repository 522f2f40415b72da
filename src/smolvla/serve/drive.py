"""`smolvla client`: drive a robot from a policy server — Meta-World, or a recorded dataset episode replayed.

The robot side of `smolvla serve`: connects (token, TLS, reconnect with backoff), asks the server which features it
expects, runs `RobotClient` episodes (sync / async / async + real-time chunking, `--client.*` flags) and prints and
optionally writes their statistics (success, task time, stalls, chunk-join jumps, round-trip percentiles, control
rate achieved).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from smolvla.atomic import atomic_write_text
from smolvla.data.replay import ReplayRobot
from smolvla.errors import ConfigError, ServerError
from smolvla.keys import IMAGE_PREFIX
from smolvla.serve.client import PolicyClient
from smolvla.serve.robot import ClientConfig, EpisodeStats, RobotClient, remote_source

ROBOTS = ("metaworld", "replay")


@dataclass
class RunClientConfig:
    server: str = "127.0.0.1:50051"
    token: str | None = None
    tls_root_cert: str | None = None  # PEM of the CA that signed the server's certificate
    robot: str = "metaworld"  # metaworld | replay
    task: str = "window-open"  # metaworld: the Meta-World task
    dataset_root: str | None = None  # replay: a LeRobot dataset whose episode is played back as observations
    replay_episode: int = 0
    episodes: int = 1
    seed: int = 5000  # metaworld: episode i starts from seed + i
    num_steps: int = 0  # denoising steps the server runs (0 = the policy's)
    output_dir: str | None = None  # writes client_stats.json here
    # robot key → the server's key, LeRobot's JSON form: which of the robot's cameras feeds each served one
    rename_map: dict[str, str] = field(default_factory=dict)
    client: ClientConfig = field(default_factory=ClientConfig)

    def validate(self) -> None:
        if self.robot not in ROBOTS:
            raise ConfigError(f"--robot must be one of {ROBOTS}, got {self.robot!r}")
        if self.robot == "replay" and not self.dataset_root:
            raise ConfigError("--robot=replay needs --dataset_root=<a LeRobot dataset directory>")
        if self.episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {self.episodes}")
        self.client.validate()


def make_robot(config: RunClientConfig, info: Any):
    """The robot for `config.robot`, with the cameras and image size the served policy expects."""
    if config.robot == "replay":
        return ReplayRobot(config.dataset_root, config.replay_episode)
    from smolvla.sim.robot import MetaWorldRobot  # the optional `sim` extra: a replayed robot does not need it

    robot_key = {served: key for key, served in config.rename_map.items()}
    cameras = {  # served key → the Meta-World camera rendered for it
        f.name: robot_key.get(f.name, f.name).removeprefix(IMAGE_PREFIX)
        for f in info.features
        if f.name.startswith(IMAGE_PREFIX)
    }
    if not cameras:
        raise ConfigError("the served policy expects no camera: Meta-World needs one")
    size = next(f.shape[0] for f in info.features if f.name in cameras)
    return MetaWorldRobot(config.task, cameras, size, max_steps=config.client.max_steps)


def measured_delay_steps(client: PolicyClient, robot, config: RunClientConfig, calls: int = 3) -> int:
    """The control steps a chunk takes to come back: the slowest of a few round trips (they also warm the server up)
    on the robot's first observation, at the robot's rate."""
    obs = robot.reset(config.seed)
    slowest = max(client.predict(obs.state, obs.images, obs.task, num_steps=config.num_steps).round_trip_ms
                  for _ in range(calls))  # fmt: skip
    return math.ceil(slowest / 1000 * robot.fps)


def summarize(episodes: list[EpisodeStats], wall_s: list[float]) -> dict[str, Any]:
    latency = [ms for e in episodes for ms in e.latency_ms]
    steps = sum(e.steps for e in episodes)
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "task_seconds": float(np.mean([e.seconds for e in episodes])),
        "stall_steps": float(np.mean([e.stalls for e in episodes])),
        "boundary_jump": float(np.mean([e.boundary_jump for e in episodes])),
        "within_jump": float(np.mean([e.within_jump for e in episodes])),
        "round_trip_ms": {f"p{q}": float(np.percentile(latency, q)) if latency else None for q in (50, 99)},
        "max_in_flight": max(e.max_in_flight for e in episodes),
        "dropped_replies": sum(e.dropped for e in episodes),
        "control_hz": steps / sum(wall_s),  # achieved: the robot's fps when realtime, the simulator's speed if not
        "per_episode": [asdict(e) | {"wall_s": w} for e, w in zip(episodes, wall_s, strict=True)],
    }


def run_client(config: RunClientConfig) -> dict[str, Any]:
    config.validate()
    client = PolicyClient(address=config.server, token=config.token, tls_root_cert=config.tls_root_cert)
    try:
        try:
            info = client.info()
        except grpc.RpcError as e:
            raise ServerError(f"policy server {config.server}: {e.code().name}: {e.details()}") from e
        robot = make_robot(config, info)
        source = remote_source(client, config.num_steps, config.client.rtc)
        runner = RobotClient(source, config.client, chunk_size=info.chunk_size,
                             rtc_training_max_delay=info.rtc_training_max_delay)  # fmt: skip
        if config.client.realtime:  # the delay is the server's: measure it on the first observation, then check
            config.client.check_timing(info.chunk_size, measured_delay_steps(client, robot, config),
                                       info.rtc_training_max_delay)  # fmt: skip
        episodes, wall = [], []
        for i in range(config.episodes):
            started = time.perf_counter()
            episodes.append(runner.run_episode(robot, seed=config.seed + i))
            wall.append(time.perf_counter() - started)
            e = episodes[-1]
            print(f"episode {i}: success={e.success} {e.steps} steps ({e.seconds:.2f} s robot time), "
                  f"{e.requests} chunks, {e.stalls} stall steps, jump at joins {e.boundary_jump:.4f} "
                  f"vs within {e.within_jump:.4f}", flush=True)  # fmt: skip
        if hasattr(robot, "close"):
            robot.close()
    finally:
        client.close()
    summary = summarize(episodes, wall)
    if config.output_dir:
        path = Path(config.output_dir) / "client_stats.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
        summary["path"] = str(path)
    return summary
