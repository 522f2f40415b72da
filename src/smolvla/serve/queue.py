"""The robot client's action queue and observation filter (SmolVLA's asynchronous inference, arXiv 2506.01844).

The robot executes queued actions at its control rate; when fewer than g·chunk remain it sends its newest
observation, and the returned chunk — which starts at that observation's timestep — is merged in: steps already
executed are dropped as stale, steps that overlap queued ones are combined by an aggregate function, later steps are
appended. Observations too close in joint space to the last one sent are skipped, unless the queue is empty.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from smolvla.errors import ConfigError

Aggregate = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (queued (n, d), new (n, d)) -> (n, d)

AGGREGATES: dict[str, Aggregate] = {
    "latest": lambda old, new: new,  # the newest chunk saw the newest observation
    "oldest": lambda old, new: old,  # keep what was planned: smoothest, least reactive
    "average": lambda old, new: 0.5 * (old + new),
    "weighted": lambda old, new: 0.3 * old + 0.7 * new,  # LeRobot's weighted_average
}


class ActionQueue:
    """Actions for timesteps [first, first + n) in one (n, action_dim) array; `first` is the next one to execute."""

    def __init__(self, action_dim: int, aggregate: str = "weighted"):
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate {aggregate!r} is not one of {sorted(AGGREGATES)}")
        self.aggregate = AGGREGATES[aggregate]
        self.actions = np.zeros((0, action_dim), dtype=np.float32)
        self.first = 0

    def __len__(self) -> int:
        return len(self.actions)

    def merge(self, chunk: np.ndarray, start: int) -> None:
        """Add a chunk whose row 0 is the action for timestep `start`: rows before `first` are stale and dropped,
        rows over queued timesteps are aggregated with them, the rest is appended."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if len(self.actions) == 0 and start > self.first:
            self.first = start  # an empty queue simply continues where the chunk starts
        offset = start - self.first
        if offset < 0:
            chunk, offset = chunk[-offset:], 0
        if offset > len(self.actions):
            raise ValueError(f"chunk starts at timestep {start}, after the queue's end {self.first + len(self)}")
        overlap = min(len(self.actions) - offset, len(chunk))
        merged = self.actions.copy()
        merged[offset : offset + overlap] = self.aggregate(merged[offset : offset + overlap], chunk[:overlap])
        self.actions = np.concatenate([merged, chunk[overlap:]])

    def pop(self, timestep: int) -> np.ndarray | None:
        """The action for `timestep` (earlier queued ones are discarded), or None when the queue has run dry."""
        if timestep < self.first:
            raise ValueError(f"timestep {timestep} was already executed (next is {self.first})")
        drop = min(timestep - self.first, len(self.actions))
        self.actions, self.first = self.actions[drop:], timestep
        if len(self.actions) == 0:
            return None
        action, self.actions, self.first = self.actions[0], self.actions[1:], timestep + 1
        return action


class SimilarityFilter:
    """Skip observations whose state moved less than `threshold` (RMS over joints, in units of each joint's
    standard deviation) since the last one sent. LeRobot compares raw joint values against a fixed epsilon, so with
    joints in degrees it never skips anything (lerobot#1557); normalizing makes one threshold fit every robot."""

    def __init__(self, scale: np.ndarray, threshold: float):
        scale = np.asarray(scale, dtype=np.float64)
        if not np.isfinite(scale).all():
            raise ConfigError("similarity filter scale (state std) contains NaN or Inf")
        self.scale = np.maximum(scale, 1e-6)
        self.threshold = threshold
        self.last: np.ndarray | None = None

    def distance(self, state: np.ndarray) -> float:
        if self.last is None:
            return float("inf")
        return float(np.sqrt(np.mean(((np.asarray(state) - self.last) / self.scale) ** 2)))

    def should_send(self, state: np.ndarray, queue_empty: bool) -> bool:
        """True when the observation is new enough (any, with threshold 0), or when the robot would otherwise starve."""
        return queue_empty or self.threshold <= 0 or self.distance(state) > self.threshold

    def sent(self, state: np.ndarray) -> None:
        self.last = np.asarray(state, dtype=np.float64).copy()
