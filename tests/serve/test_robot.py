"""The robot client's control loop on a fake robot: sync vs async under a simulated delay, stale chunk rows, the
similarity filter, the real-time clock, and a full episode through the gRPC server."""

import time

import numpy as np
import pytest

from smolvla.errors import ConfigError
from smolvla.robot_io import Observation
from smolvla.serve.robot import ClientConfig, RobotClient

TARGET = 3.0


class PointRobot:
    """A 1-D point at 10 Hz: the action is a velocity; success when it reaches TARGET."""

    fps = 10.0

    def __init__(self):
        self.position = 0.0

    def _obs(self):
        return Observation(np.array([self.position], np.float32), {}, "reach")

    def reset(self, seed):
        self.position = 0.0
        return self._obs()

    def step(self, action):
        self.position += float(action[0]) / self.fps
        return self._obs(), self.position >= TARGET, False

    def hold(self, last_action):
        return np.zeros(1, np.float32)


def planner(request, chunk=10):
    """Constant speed 1 towards the target."""
    return np.ones((chunk, 1), np.float32)


def run(**cfg):
    return RobotClient(planner, ClientConfig(**cfg)).run_episode(PointRobot(), seed=0)


def test_async_hides_the_inference_delay_that_sync_pays_for():
    sync = run(mode="sync", delay_s=0.3, n_action_steps=5)
    asynchronous = run(mode="async", delay_s=0.3, chunk_threshold=0.5)
    ideal = run(mode="async", delay_s=0.0)
    assert sync.success and asynchronous.success and ideal.success
    assert ideal.steps == 30 and ideal.stalls == 0  # 3 units at 1 unit/s, 10 Hz
    # Sync stands still 3 steps before each 5-action chunk; async asks early enough to never run dry after the start.
    assert sync.stalls == 3 * sync.requests
    assert asynchronous.stalls == 3  # only the very first chunk is waited for
    assert asynchronous.steps == ideal.steps + 3 < sync.steps
    assert asynchronous.seconds == pytest.approx(asynchronous.steps / 10)


def test_a_delay_longer_than_the_chunk_leaves_only_stale_actions():
    slow = run(mode="async", delay_s=1.5, chunk_threshold=0.5, max_steps=100)  # 15 steps of delay, 10-step chunks
    # Every chunk lands after all of its timesteps have passed: nothing is executed, the robot never moves.
    assert not slow.success and slow.stalls == slow.steps == 100


def test_similarity_filter_skips_still_observations_but_never_starves():
    class Stuck(PointRobot):  # the state never changes: every observation looks like the last one
        def step(self, action):
            super().step(action)
            self.position = 0.0
            return self._obs(), False, False

    client = RobotClient(planner, ClientConfig(mode="async", filter_threshold=0.5, chunk_threshold=0.5, max_steps=40))
    stats = client.run_episode(Stuck(), seed=0)
    assert stats.skipped > 0  # held back while actions remained
    assert stats.requests == 4 and stats.stalls == 0  # a new chunk exactly when the queue ran dry


def test_realtime_clock_runs_the_request_in_the_background():
    def slow_planner(request):
        time.sleep(0.05)
        return planner(request)

    client = RobotClient(slow_planner, ClientConfig(mode="async", realtime=True, chunk_threshold=0.5))
    started = time.perf_counter()
    stats = client.run_episode(PointRobot(), seed=0)
    assert stats.success
    assert time.perf_counter() - started >= (stats.steps - 1) / 10  # paced at 10 Hz by the wall clock
    assert all(ms >= 50 for ms in stats.latency_ms)


def test_rtc_sends_the_still_queued_actions_and_lets_the_new_chunk_replace_them():
    requests = []

    def stamped(request, chunk=10):  # speed ≈ 1, the action for timestep τ stamped as 1 + τ/1000
        requests.append(request)
        return 1 + (request.timestep + np.arange(chunk, dtype=np.float32)[:, None]) / 1000

    client = RobotClient(stamped, ClientConfig(mode="async", rtc=True, delay_s=0.3, chunk_threshold=0.5))
    robot = PointRobot()
    stats = client.run_episode(robot, seed=0)
    assert stats.success and stats.requests == len(requests) > 3
    assert requests[0].queued_actions is None  # nothing queued yet
    for request in requests[1:]:  # asked with 5 queued (threshold 0.5 × 10), 3 of which run during the 0.3 s delay
        expected = 1 + (request.timestep + np.arange(5, dtype=np.float32)[:, None]) / 1000
        np.testing.assert_allclose(request.queued_actions, expected, rtol=0, atol=1e-6)
        assert request.frozen == 3
    assert stats.boundary_jump == pytest.approx(stats.within_jump, abs=1e-6)  # "latest": no seam at merges


def test_bad_client_settings():
    for bad in ({"mode": "eager"}, {"chunk_threshold": 2.0}, {"delay_s": -1.0}, {"mode": "sync", "rtc": True}):
        with pytest.raises(ConfigError):
            RobotClient(planner, ClientConfig(**bad))
