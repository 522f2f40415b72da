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


def test_a_delay_longer_than_the_chunk_leaves_the_robot_mostly_standing():
    slow = run(mode="async", delay_s=1.5, chunk_threshold=0.5, max_steps=100)  # 15 steps of delay, 10-step chunks
    # Each chunk lands 10 ticks after the queue ran dry: the robot stands still more than it moves.
    assert slow.stalls > slow.steps / 2 and slow.steps > 2 * run(mode="async").steps
    # Which is why a client that knows the policy's chunk refuses such settings before the robot moves.
    client = RobotClient(planner, ClientConfig(mode="async", delay_s=1.5), chunk_size=10)
    with pytest.raises(ConfigError, match="15 control steps is not shorter than the policy's chunk"):
        client.run_episode(PointRobot(), seed=0)


def test_a_chunk_landing_after_a_wait_starts_at_its_first_row():
    """Rows are indexed by executed actions, not ticks: while the robot held still (waiting for its first chunk, or
    after the queue ran dry) no row became stale, so the chunk is executed from row 0 — as sync does."""
    robot = Recording()
    config = ClientConfig(mode="async", delay_s=0.5, chunk_threshold=0.8, aggregate="latest", max_steps=30)
    RobotClient(timed, config, chunk_size=10).run_episode(robot, seed=0)
    first = robot.executed[5]  # after 5 ticks of waiting
    assert [round((first[0] - 1) * 1000), int(first[1])] == [0, 0]  # row 0 of the chunk asked for at the start


def test_the_sizing_rule_is_checked_at_client_start():
    """g·chunk >= delay·fps, else the robot stands still every chunk; training-time RTC only for a policy trained
    for it, and for no longer a delay than it was trained with."""
    with pytest.raises(ConfigError, match=r"5 of 10 actions left, fewer than an inference delay of 6 .* >= 0.6"):
        ClientConfig(chunk_threshold=0.5).check_timing(chunk_size=10, delay_steps=6)
    with pytest.raises(ConfigError, match=r"max_in_flight 1 a chunk lands at best every 6 steps .* >= 2"):
        ClientConfig(chunk_threshold=0.6).check_timing(chunk_size=10, delay_steps=6)
    ClientConfig(chunk_threshold=0.6, max_in_flight=2).check_timing(chunk_size=10, delay_steps=6)
    ClientConfig(mode="sync").check_timing(chunk_size=10, delay_steps=30)  # sync waits: slow, never stale
    with pytest.raises(ConfigError, match="not trained for training-time"):
        ClientConfig(rtc="trained").check_timing(chunk_size=50, delay_steps=8)
    with pytest.raises(ConfigError, match="at most 4 given"):
        ClientConfig(rtc="trained").check_timing(chunk_size=50, delay_steps=8, rtc_training_max_delay=4)
    ClientConfig(rtc="trained").check_timing(chunk_size=50, delay_steps=8, rtc_training_max_delay=8)
    # A simulated episode checks before the first step: the robot is never reset.
    robot = Recording()
    with pytest.raises(ConfigError, match="chunk_threshold"):
        RobotClient(planner, ClientConfig(delay_s=0.6), chunk_size=10).run_episode(robot, seed=0)
    assert not hasattr(robot, "executed")


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

    client = RobotClient(stamped, ClientConfig(mode="async", rtc="guided", delay_s=0.3, chunk_threshold=0.5))
    robot = PointRobot()
    stats = client.run_episode(robot, seed=0)
    assert stats.success and stats.requests == len(requests) > 3
    assert requests[0].queued_actions is None  # nothing queued yet
    for request in requests[1:]:  # asked with 5 queued (threshold 0.5 × 10), 3 of which run during the 0.3 s delay
        expected = 1 + (request.timestep + np.arange(5, dtype=np.float32)[:, None]) / 1000
        np.testing.assert_allclose(request.queued_actions, expected, rtol=0, atol=1e-6)
        assert request.frozen == 3
    assert stats.boundary_jump == pytest.approx(stats.within_jump, abs=1e-6)  # "latest": no seam at merges


def timed(request, chunk=10):
    """Speed ≈ 1 in dim 0, the timestep each row is for stamped as 1 + τ/1000; dim 1: the request's timestep."""
    rows = np.arange(chunk, dtype=np.float32)[:, None]
    return np.concatenate([1 + (request.timestep + rows) / 1000, np.full_like(rows, request.timestep)], axis=1)


class Recording(PointRobot):
    def reset(self, seed):
        self.executed = []
        return super().reset(seed)

    def step(self, action):
        self.executed.append(action)
        return super().step(action if action[1] >= 0 else np.zeros(1, np.float32))

    def hold(self, last_action):
        return np.array([0.0, -1.0], np.float32)  # standing still: marked as no chunk's row


def executed_rows(robot):
    """Per executed chunk action (holds skipped): (its index among them, the index its row was planned for, the
    action index at the observation it came from)."""
    rows = [a for a in robot.executed if a[1] >= 0]
    return [(k, round((a[0] - 1) * 1000), int(a[1])) for k, a in enumerate(rows)]


def test_pipelined_requests_stay_within_k_and_execute_each_timestep_once_in_order():
    """5 steps of delay, chunks of 10 asked for with 8 left (g = 0.8: one every 2 steps when pipelined): at most k
    in flight, every executed row is the one planned for that very action (never one twice, never out of order),
    and pipelining executes fresher plans."""
    ages = {}
    for k in (1, 3):
        robot = Recording()
        config = ClientConfig(mode="async", delay_s=0.5, chunk_threshold=0.8, aggregate="latest", max_in_flight=k,
                              max_steps=60)  # fmt: skip
        stats = RobotClient(timed, config, chunk_size=10).run_episode(robot, seed=0)
        rows = executed_rows(robot)
        assert stats.success and stats.max_in_flight == k and stats.dropped == 0
        assert stats.stalls == 5  # only the first chunk is waited for
        assert [planned for i, planned, _ in rows] == [i for i, _, _ in rows]  # each one's own row, in order, once
        ages[k] = max(i - asked for i, _, asked in rows if i >= 10)  # actions since the observation, after the start
    assert ages == {1: 2 * 5 - 1, 3: 5 + 2 - 1}  # delay + request interval - 1: the interval is the delay without


def test_pipelined_replies_out_of_order_are_merged_by_timestep():
    """Real clock, 3 in flight, every other reply slow: late replies older than a merged one are dropped, and the
    robot still executes each step's own row once, in order."""
    calls = []

    def uneven(request):
        calls.append(request.timestep)
        time.sleep(0.35 if len(calls) % 2 else 0.05)
        return timed(request)

    robot = Recording()
    config = ClientConfig(mode="async", realtime=True, chunk_threshold=0.8, aggregate="latest", max_in_flight=3,
                          max_steps=40)  # fmt: skip
    stats = RobotClient(uneven, config, chunk_size=10).run_episode(robot, seed=0)
    rows = executed_rows(robot)
    assert stats.max_in_flight <= 3 and stats.dropped > 0
    assert [planned for i, planned, _ in rows] == [i for i, _, _ in rows] and len(rows) > 20


def test_bad_client_settings():
    bad_settings = ({"mode": "eager"}, {"chunk_threshold": 2.0}, {"delay_s": -1.0}, {"mode": "sync", "rtc": "guided"},
                    {"rtc": "yes"}, {"max_in_flight": 0}, {"mode": "sync", "max_in_flight": 2})  # fmt: skip
    for bad in bad_settings:
        with pytest.raises(ConfigError, match="--client"):
            RobotClient(planner, ClientConfig(**bad))
