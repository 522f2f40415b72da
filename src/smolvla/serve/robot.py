"""`RobotClient`: the robot's control loop around a chunk source (the policy server, or a local policy).

Synchronous execution asks for a chunk when the queue is empty and stands still until it arrives; asynchronous
execution asks as soon as at most `chunk_threshold` × chunk actions remain (counting those already requested), keeps
executing meanwhile, and merges the chunk when it lands (`queue.ActionQueue`). Chunk rows are indexed by executed
actions, not clock ticks: the rows for actions executed since the observation are stale, but a tick spent holding
still (waiting for the first chunk, or with an empty queue) makes no row stale — the chunk then starts at the row
for where the robot really is in the plan. With `max_in_flight` = k > 1 the
requests are pipelined: a new one goes out every (1 − g)·chunk steps even while earlier ones are still computed, so at
a long delay the robot executes fresher chunks (the age of an executed action is at most delay + (1 − g)·chunk steps
instead of 2·delay); replies are merged by timestep and a reply older than one already merged is dropped.

The sizing rule (SmolVLA's async inference): the chunk must outlast the delay. Asking with g·chunk actions left, a
reply d steps later lands in time only if g·chunk ≥ d; and as at most k requests are in flight, replies land at best
every d/k steps, each with chunk − d actions still ahead, so chunk ≥ d·(1 + 1/k) (`check_timing`, at client start). A
delay of a chunk or more leaves nothing but stale actions.

Real-time chunking (`rtc`): the request carries the still-queued actions, of which `frozen` execute before the chunk
can land; "guided" inpaints towards them (arXiv 2506.07339, an extra backward per denoising step), "trained" gives
the frozen ones to a policy trained for it (arXiv 2512.05964, `rtc_training_max_delay`; a plain chunk's cost). Either
way the new chunk continues the queued actions and simply replaces them.

Two clocks:

- `realtime=True` (a physical robot): actions at `fps` by the wall clock, requests in background threads, the
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
    timestep: int  # the index of the next action to execute when the observation was taken: the chunk's row 0
    queued_actions: np.ndarray | None = None  # RTC: actions still queued for timestep, timestep + 1, ... (L, d)
    frozen: int = 0  # how many of them execute before the chunk can arrive


ChunkSource = Callable[[ChunkRequest], np.ndarray]  # -> (chunk, action_dim) robot actions


RTC_MODES = ("off", "guided", "trained")


@dataclass
class ClientConfig:
    mode: str = "async"  # async | sync
    chunk_threshold: float = 0.5  # g: ask for a chunk when at most g × chunk_size actions remain (or are requested)
    n_action_steps: int | None = None  # sync: actions executed per chunk (default: the whole chunk)
    aggregate: str = "weighted"  # latest | oldest | average | weighted
    rtc: str = "off"  # real-time chunking: off | guided | trained (the chunk continues the queued actions)
    max_in_flight: int = 1  # k: requests computed at once (async); > 1 pipelines them
    filter_threshold: float = 0.0  # skip observations that moved less (RMS joint stds); 0 = send every time
    delay_s: float = 0.0  # simulated inference delay (realtime=False)
    realtime: bool = False
    max_steps: int = 500

    def validate(self) -> None:
        if self.mode not in ("async", "sync"):
            raise ConfigError(f"--client.mode must be async or sync, got {self.mode!r}")
        if not 0.0 <= self.chunk_threshold <= 1.0:
            raise ConfigError(f"--client.chunk_threshold must be in [0, 1], got {self.chunk_threshold}")
        if self.delay_s < 0 or self.filter_threshold < 0:
            raise ConfigError("--client.delay_s and --client.filter_threshold must be >= 0")
        if self.rtc not in RTC_MODES:
            raise ConfigError(f"--client.rtc must be one of {RTC_MODES}, got {self.rtc!r}")
        if self.rtc != "off" and self.mode != "async":
            raise ConfigError("--client.rtc needs --client.mode=async (sync has no queued actions to continue)")
        if self.max_in_flight < 1:
            raise ConfigError(f"--client.max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_in_flight > 1 and self.mode != "async":
            raise ConfigError("--client.max_in_flight > 1 needs --client.mode=async (sync waits for each chunk)")

    def check_timing(self, chunk_size: int, delay_steps: int, rtc_training_max_delay: int = 0) -> None:
        """Refuse settings that cannot work for a policy's chunk at a delay of `delay_steps` control steps."""
        if self.mode == "sync":
            return
        delay = f"an inference delay of {delay_steps} control steps"
        if delay_steps >= chunk_size:
            raise ConfigError(f"{delay} is not shorter than the policy's chunk ({chunk_size} actions): every chunk "
                              "would be stale when it lands; use a longer chunk or a faster server")  # fmt: skip
        left = self.chunk_threshold * chunk_size
        if left < delay_steps:
            raise ConfigError(
                f"--client.chunk_threshold {self.chunk_threshold} asks for a chunk with {left:g} of {chunk_size} "
                f"actions left, fewer than {delay}: the robot would stand still each chunk; set it to >= "
                f"{math.ceil(100 * delay_steps / chunk_size) / 100}"
            )
        landing = math.ceil(delay_steps / self.max_in_flight)  # at best a reply every delay / k steps
        if chunk_size - delay_steps < landing:
            raise ConfigError(
                f"with --client.max_in_flight {self.max_in_flight} a chunk lands at best every {landing} steps at "
                f"{delay}, but only {chunk_size - delay_steps} of its {chunk_size} actions are still ahead when it "
                f"lands: the robot would stand still; set --client.max_in_flight to >= "
                f"{math.ceil(delay_steps / (chunk_size - delay_steps))}"
            )
        if self.rtc == "trained" and not rtc_training_max_delay:
            raise ConfigError("--client.rtc=trained: the policy was not trained for training-time real-time chunking "
                              "(rtc_training_max_delay is 0); use --client.rtc=guided")  # fmt: skip
        if self.rtc == "trained" and delay_steps > rtc_training_max_delay:
            raise ConfigError(f"--client.rtc=trained: {delay}, but the policy was trained with at most "
                              f"{rtc_training_max_delay} given (rtc_training_max_delay); use guided")  # fmt: skip


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
    max_in_flight: int = 0  # the most requests computed at once
    dropped: int = 0  # replies older than one already merged (pipelining, out of order): not executed


class RobotClient:
    """`chunk_size` and `rtc_training_max_delay` describe the served policy (its `Info`); when the chunk size is
    known, each simulated episode first checks the settings against the delay (`ClientConfig.check_timing`)."""

    def __init__(self, source: ChunkSource, config: ClientConfig, state_scale: np.ndarray | None = None,
                 chunk_size: int | None = None, rtc_training_max_delay: int = 0):  # fmt: skip
        config.validate()
        self.source, self.config = source, config
        self.state_scale = state_scale
        self.chunk_size, self.rtc_training_max_delay = chunk_size, rtc_training_max_delay
        self._chunk = chunk_size or 1  # the chunk size in use: the policy's, or learnt from the first reply

    def run_episode(self, robot: Robot, seed: int) -> EpisodeStats:
        cfg = self.config
        delay_steps = math.ceil(cfg.delay_s * robot.fps - 1e-9)
        if self.chunk_size and not cfg.realtime:
            cfg.check_timing(self.chunk_size, delay_steps, self.rtc_training_max_delay)
        obs = robot.reset(seed)
        filt = SimilarityFilter(np.ones_like(obs.state) if self.state_scale is None else self.state_scale,
                                cfg.filter_threshold)  # fmt: skip
        queue: ActionQueue | None = None
        pending: list[dict[str, Any]] = []  # requests in flight, oldest first
        last, merged_at, newest, started = None, -1, -1, False
        stats = {"requests": 0, "skipped": 0, "stalls": 0, "max_in_flight": 0, "dropped": 0}
        boundary, within, latency = [], [], []
        # Two counters: t counts control ticks (the clock, the delay), n the actions executed. A chunk's rows are
        # indexed by n: a tick spent holding still (an empty queue) consumes no row, so a chunk that lands after a
        # stall starts where the robot really is in its plan — the whole chunk after a wait, as in sync execution.
        success, t, n = False, 0, 0
        period = 1.0 / robot.fps
        next_tick = time.perf_counter()

        def merge_arrived() -> None:
            nonlocal queue, newest, merged_at
            for reply in [p for p in pending if self._arrived(p, t)]:
                pending.remove(reply)
                if reply["start"] <= newest:  # a newer observation's chunk is already merged: this one is stale
                    stats["dropped"] += 1
                    continue
                chunk = reply["chunk"]
                if cfg.mode == "sync" and cfg.n_action_steps:
                    chunk = chunk[: cfg.n_action_steps]
                if queue is None:  # RTC's chunk already agrees with the queued steps: it simply replaces them
                    queue = ActionQueue(chunk.shape[1], "latest" if cfg.rtc != "off" else cfg.aggregate)
                    queue.first = n
                # Rows for actions executed since the observation are stale (async: the robot kept moving); sync
                # executed none while it waited, so its chunk starts at row 0.
                queue.merge(chunk, reply["start"])
                newest, merged_at = reply["start"], t

        while t < cfg.max_steps:
            merge_arrived()  # first: a reply that lands now frees its slot and updates what is left
            if self._wants_chunk(n, queue, pending, obs, filt, stats):
                pending.append(self._request(ChunkRequest(obs, n), t, queue, delay_steps, latency, robot.fps))
                filt.sent(obs.state)
                stats["requests"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], len(pending))
                merge_arrived()  # a reply without delay lands at once
            action = None if queue is None else queue.pop(n)
            if action is None:
                action = robot.hold(last)
                stats["stalls"] += 1
            else:
                n += 1
                if started:  # the jump from rest into the very first chunk is the same for every mode: not counted
                    (boundary if merged_at == t else within).append(float(np.abs(action - last).mean()))
                started = True
            obs, success, over = robot.step(action)
            last, t = action, t + 1
            if cfg.realtime:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.perf_counter()))
            if success or over:
                break
        for reply in pending:
            if "thread" in reply:
                reply["thread"].join()
        return EpisodeStats(
            success=success, steps=t, seconds=t / robot.fps, requests=stats["requests"], skipped=stats["skipped"],
            stalls=stats["stalls"], boundary_jump=float(np.mean(boundary)) if boundary else 0.0,
            within_jump=float(np.mean(within)) if within else 0.0, latency_ms=latency,
            max_in_flight=stats["max_in_flight"], dropped=stats["dropped"],
        )  # fmt: skip

    # --- helpers ---
    def _wants_chunk(self, n: int, queue: ActionQueue | None, pending: list[dict[str, Any]], obs: Observation,
                     filt: SimilarityFilter, stats: dict[str, int]) -> bool:  # fmt: skip
        cfg = self.config
        queued = 0 if queue is None else len(queue)
        if cfg.mode == "sync":
            return queued == 0 and not pending
        if len(pending) >= cfg.max_in_flight or (queue is None and pending):  # (the chunk size is not known yet)
            return False
        if queue is not None:  # actions for the steps ahead, queued or already asked for
            chunk = self._chunk
            covered = max([queue.first + queued] + [p["start"] + chunk for p in pending]) - n
            if covered > cfg.chunk_threshold * chunk:
                return False
        if filt.should_send(obs.state, queue_empty=queued == 0):
            return True
        stats["skipped"] += 1
        return False

    def _request(self, request: ChunkRequest, tick: int, queue: ActionQueue | None, delay_steps: int,
                 latency: list[float], fps: float) -> dict[str, Any]:  # fmt: skip
        cfg = self.config
        pending: dict[str, Any] = {"start": request.timestep}
        if cfg.rtc != "off" and queue is not None and len(queue):
            if cfg.realtime:  # expected delay: the recent round trips, in control steps
                delay_steps = math.ceil(np.mean(latency[-5:]) / 1000 * fps) if latency else 0
            queued = queue.actions[: self._chunk].copy()
            frozen = min(delay_steps, len(queued))
            if cfg.rtc == "trained":  # the policy was trained with at most this many given steps
                frozen = min(frozen, self.rtc_training_max_delay or frozen)
            if cfg.rtc == "guided" or frozen > 0:  # trained with nothing frozen: a plain chunk
                request.queued_actions, request.frozen = queued, frozen

        def call() -> None:
            started = time.perf_counter()
            pending["chunk"] = np.asarray(self.source(request), dtype=np.float32)
            self._chunk = len(pending["chunk"])
            latency.append(1000 * (time.perf_counter() - started))

        if cfg.realtime:
            pending["thread"] = threading.Thread(target=call, daemon=True)
            pending["thread"].start()
        else:
            call()
            pending["ready_at"] = tick + delay_steps
        return pending

    def _arrived(self, pending: dict[str, Any], t: int) -> bool:
        if self.config.realtime:
            return "chunk" in pending
        return t >= pending["ready_at"]


def remote_source(client, num_steps: int = 0, rtc: str = "guided") -> ChunkSource:
    """Chunks from a policy server through a `PolicyClient`; queued actions are sent for `rtc` (guided | trained)."""

    def source(request: ChunkRequest) -> np.ndarray:
        obs = request.observation
        return client.predict(obs.state, obs.images, obs.task, request.timestep, num_steps=num_steps,
                              queued_actions=request.queued_actions, frozen_steps=request.frozen,
                              rtc_mode=rtc).actions  # fmt: skip

    return source
