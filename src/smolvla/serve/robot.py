"""`RobotClient`: the robot's control loop around a chunk source (the policy server, or a local policy).

Synchronous execution asks for a chunk when the queue is empty and stands still until it arrives; asynchronous
execution asks as soon as the queue falls to `chunk_threshold` × chunk size (and the state moved enough), keeps
executing meanwhile, and merges the chunk when it lands (`queue.ActionQueue`). Two clocks:

- `realtime=True` (a physical robot): actions at `fps` by the wall clock, requests in a background thread, the
  delay is whatever the network and server take;
- `realtime=False` (simulation): the loop steps the simulator as fast as it can and a chunk requested at step t is
  delivered at step t + `delay_s` · fps — the simulator keeps moving while the policy "thinks", so the inference
  delay costs what it would cost on a robot, reproducibly and independently of this machine's speed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smolvla.errors import ConfigError
from smolvla.robot_io import Observation, Robot
from smolvla.serve.queue import ActionQueue, SimilarityFilter


@dataclass
class ChunkRequest:
    observation: Observation
    timestep: int  # the observation's control step: row 0 of the chunk is the action for it
    queued_actions: np.ndarray | None = None  # RTC: actions still queued for timestep, timestep + 1, ... (L, d)
    frozen: int = 0  # how many of them execute before the chunk can arrive


ChunkSource = Callable[[ChunkRequest], np.ndarray]  # -> (chunk, action_dim) robot actions


@dataclass
class ClientConfig:
    mode: str = "async"  # async | sync
    chunk_threshold: float = 0.5  # g: ask for a chunk when at most g × chunk_size actions remain queued
    n_action_steps: int | None = None  # sync: actions executed per chunk (default: the whole chunk)
    aggregate: str = "weighted"  # latest | oldest | average | weighted
    rtc: bool = False  # real-time chunking: send the queued actions; the chunk continues them and replaces them
    filter_threshold: float = 0.0  # skip observations that moved less (RMS joint stds); 0 = send every time
    delay_s: float = 0.0  # simulated inference delay (realtime=False)
    realtime: bool = False
    max_steps: int = 500

    def validate(self) -> None:
        if self.mode not in ("async", "sync"):
            raise ConfigError(f"mode must be async or sync, got {self.mode!r}")
        if not 0.0 <= self.chunk_threshold <= 1.0:
            raise ConfigError(f"chunk_threshold must be in [0, 1], got {self.chunk_threshold}")
        if self.delay_s < 0 or self.filter_threshold < 0:
            raise ConfigError("delay_s and filter_threshold must be >= 0")
        if self.rtc and self.mode != "async":
            raise ConfigError("rtc needs mode=async (sync execution has no queued actions to continue)")


@dataclass
class EpisodeStats:
    success: bool
    steps: int  # control steps until success or the cap
    seconds: float  # steps / fps: task time as the robot lives it
    requests: int
    skipped: int  # observations the similarity filter held back
    stalls: int  # steps with an empty queue (the robot stood still)
    boundary_jump: float  # mean |Δaction| at the first step after each merge (from a held action after a stall)
    within_jump: float  # mean |Δaction| elsewhere
    latency_ms: list[float] = field(default_factory=list)  # request round trips as measured by the client


class RobotClient:
    def __init__(self, source: ChunkSource, config: ClientConfig, state_scale: np.ndarray | None = None):
        config.validate()
        self.source, self.config = source, config
        self.state_scale = state_scale
        self._chunk_size = 1  # learnt from the first chunk

    def run_episode(self, robot: Robot, seed: int) -> EpisodeStats:
        cfg = self.config
        obs = robot.reset(seed)
        filt = SimilarityFilter(np.ones_like(obs.state) if self.state_scale is None else self.state_scale,
                                cfg.filter_threshold)  # fmt: skip
        delay_steps = math.ceil(cfg.delay_s * robot.fps - 1e-9)
        queue: ActionQueue | None = None
        pending: dict[str, Any] | None = None
        last, merged_at, started = None, -1, False
        stats = {"requests": 0, "skipped": 0, "stalls": 0}
        boundary, within, latency = [], [], []
        success, t = False, 0
        period = 1.0 / robot.fps
        next_tick = time.perf_counter()
        while t < cfg.max_steps:
            queued = 0 if queue is None else len(queue)
            if pending is None and self._wants_chunk(queued, queue, obs, filt, stats):
                pending = self._request(ChunkRequest(obs, t), queue, delay_steps, latency, robot.fps)
                filt.sent(obs.state)
                stats["requests"] += 1
            if pending is not None and self._arrived(pending, t):
                chunk = pending["chunk"]
                if cfg.mode == "sync" and cfg.n_action_steps:
                    chunk = chunk[: cfg.n_action_steps]
                if queue is None:  # RTC's chunk already agrees with the queued steps: it simply replaces them
                    queue = ActionQueue(chunk.shape[1], "latest" if cfg.rtc else cfg.aggregate)
                    queue.first = t
                # Sync: the robot stood still while waiting, so the chunk starts now; async: it kept moving, so the
                # rows for the steps executed since the observation are stale.
                queue.merge(chunk, t if cfg.mode == "sync" else pending["start"])
                pending, merged_at = None, t
            action = None if queue is None else queue.pop(t)
            if action is None:
                action = robot.hold(last)
                stats["stalls"] += 1
            elif started:  # the jump from rest into the very first chunk is the same for every mode: not counted
                (boundary if merged_at == t else within).append(float(np.abs(action - last).mean()))
            else:
                started = True
            obs, success, over = robot.step(action)
            last, t = action, t + 1
            if cfg.realtime:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.perf_counter()))
            if success or over:
                break
        if pending is not None and "thread" in pending:
            pending["thread"].join()
        return EpisodeStats(
            success=success, steps=t, seconds=t / robot.fps, requests=stats["requests"], skipped=stats["skipped"],
            stalls=stats["stalls"], boundary_jump=float(np.mean(boundary)) if boundary else 0.0,
            within_jump=float(np.mean(within)) if within else 0.0, latency_ms=latency,
        )  # fmt: skip

    # --- helpers ---
    def _wants_chunk(self, queued: int, queue, obs: Observation, filt: SimilarityFilter, stats) -> bool:
        if self.config.mode == "sync":
            return queued == 0
        if queue is not None and queued > self.config.chunk_threshold * self._chunk_size:
            return False
        if filt.should_send(obs.state, queue_empty=queued == 0):
            return True
        stats["skipped"] += 1
        return False

    def _request(self, request: ChunkRequest, queue: ActionQueue | None, delay_steps: int, latency: list[float],
                 fps: float) -> dict[str, Any]:  # fmt: skip
        t = request.timestep
        pending: dict[str, Any] = {"start": t}
        if self.config.rtc and queue is not None and len(queue):
            request.queued_actions = queue.actions[: self._chunk_size].copy()
            if self.config.realtime:  # expected delay: the recent round trips, in control steps
                delay_steps = math.ceil(np.mean(latency[-5:]) / 1000 * fps) if latency else 0
            request.frozen = min(delay_steps, len(request.queued_actions))

        def call() -> None:
            started = time.perf_counter()
            pending["chunk"] = np.asarray(self.source(request), dtype=np.float32)
            self._chunk_size = len(pending["chunk"])
            latency.append(1000 * (time.perf_counter() - started))

        if self.config.realtime:
            pending["thread"] = threading.Thread(target=call, daemon=True)
            pending["thread"].start()
        else:
            call()
            pending["ready_at"] = t + delay_steps
        return pending

    def _arrived(self, pending: dict[str, Any], t: int) -> bool:
        if self.config.realtime:
            return "chunk" in pending
        return t >= pending["ready_at"]


def remote_source(client, num_steps: int = 0) -> ChunkSource:
    """Chunks from a policy server through a `PolicyClient`."""

    def source(request: ChunkRequest) -> np.ndarray:
        obs = request.observation
        return client.predict(obs.state, obs.images, obs.task, request.timestep, num_steps=num_steps,
                              queued_actions=request.queued_actions, frozen_steps=request.frozen).actions  # fmt: skip

    return source
