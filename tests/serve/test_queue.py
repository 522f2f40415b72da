"""The client's action queue (stale steps dropped, overlaps aggregated) and the normalized similarity filter."""

import numpy as np
import pytest

from smolvla.errors import ConfigError
from smolvla.serve.queue import ActionQueue, SimilarityFilter


def chunk(start, n, value=None):
    """Actions whose value encodes their timestep (or a constant), 2 dims."""
    values = np.arange(start, start + n, dtype=np.float32) if value is None else np.full(n, value, np.float32)
    return np.stack([values, -values], axis=1)


def test_merge_drops_stale_steps_and_aggregates_overlaps():
    q = ActionQueue(2, aggregate="average")
    q.merge(chunk(0, 5, value=1.0), start=0)
    assert q.pop(0)[0] == 1.0 and q.pop(1)[0] == 1.0  # steps 0, 1 executed; 2..4 queued
    q.merge(chunk(1, 5, value=3.0), start=1)  # observation from step 1: its row for step 1 is stale
    assert len(q) == 4 and q.first == 2  # steps 2..5
    np.testing.assert_array_equal(q.actions[:, 0], [2.0, 2.0, 2.0, 3.0])  # 2..4 averaged, 5 appended
    latest = ActionQueue(2, aggregate="latest")
    latest.merge(chunk(0, 4, value=1.0), start=0)
    latest.merge(chunk(2, 4, value=5.0), start=2)
    np.testing.assert_array_equal(latest.actions[:, 0], [1.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    weighted = ActionQueue(2)
    weighted.merge(chunk(0, 2, value=1.0), start=0)
    weighted.merge(chunk(0, 2, value=2.0), start=0)
    np.testing.assert_allclose(weighted.actions[:, 0], [1.7, 1.7])


def test_pop_skips_missed_steps_and_reports_starvation():
    q = ActionQueue(2, aggregate="latest")
    q.merge(chunk(0, 4), start=0)
    assert q.pop(2)[0] == 2.0  # the robot ran on while nothing was popped: steps 0, 1 are discarded
    assert q.pop(3)[0] == 3.0 and q.pop(4) is None  # dry
    q.merge(chunk(2, 5), start=2)  # a late chunk: rows 2..4 are stale now
    assert q.pop(5)[0] == 5.0
    with pytest.raises(ValueError, match="already executed"):
        q.pop(1)
    with pytest.raises(ValueError, match="after the queue's end"):
        q.merge(chunk(20, 3), start=20)
    with pytest.raises(ConfigError, match="aggregate"):
        ActionQueue(2, aggregate="median")


def test_similarity_filter_is_normalized_per_joint_and_never_starves_the_robot():
    # Joint 0 in degrees (std 30), joint 1 a gripper in metres (std 0.01): LeRobot's raw epsilon cannot fit both.
    f = SimilarityFilter(scale=np.array([30.0, 0.01]), threshold=0.1)
    state = np.array([90.0, 0.02])
    assert f.should_send(state, queue_empty=False)  # nothing sent yet
    f.sent(state)
    assert not f.should_send(state + np.array([1.0, 0.0]), queue_empty=False)  # 1 degree: 0.024 std RMS
    assert f.should_send(state + np.array([0.0, 0.005]), queue_empty=False)  # half a gripper std
    assert f.should_send(state + np.array([10.0, 0.0]), queue_empty=False)  # 10 degrees
    assert f.should_send(state, queue_empty=True)  # an empty queue always gets a new chunk
    with pytest.raises(ConfigError, match="NaN"):
        SimilarityFilter(scale=np.array([np.nan, 1.0]), threshold=0.1)
