"""camera_geometry: its pinhole projection lands where the renderer draws the goal marker, and a set of cameras
locates a point only when two of them see it."""

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")  # before MuJoCo is first imported

from benchmarks import camera_geometry
from benchmarks.pilot_oracle import GOAL
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv

SIZE = 96


@pytest.fixture(scope="module")
def pick_place():
    """pick-place at a start whose blue goal marker floats in the air; its observation and the environment."""
    env = MetaWorldEnv(MetaWorldConfig(task="pick-place", image_size=SIZE, cameras=("corner", "corner4", "topview")))
    observation, _ = env.reset(seed=3)
    yield env, observation
    env.close()


@pytest.mark.parametrize("camera", ["corner", "corner4", "topview"])
def test_projection_lands_on_the_rendered_goal_marker(pick_place, camera):
    env, observation = pick_place
    goal = observation["environment_state"][GOAL].astype(np.float64)
    pixels = observation["pixels"][camera].astype(int)
    blue = (pixels[..., 2] > 120) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)  # pick-place's marker: rgb 0,0,.8
    rows, columns = np.nonzero(blue)
    assert len(rows) >= 2, f"the goal marker is not in {camera}'s image"
    (u, v), depth = camera_geometry.project(env.sim.model, env.sim.data, camera, goal, SIZE)
    if camera.startswith("corner"):  # smolvla turns the corner cameras' images by 180°
        u, v = SIZE - u, SIZE - v
    assert depth > 0
    assert abs(u - columns.mean()) < 1.5 and abs(v - rows.mean()) < 1.5
    assert camera_geometry.sees(env.sim.model, env.sim.data, camera, goal, SIZE)


def test_one_camera_leaves_depth_unknown_and_two_fix_it(pick_place):
    env, observation = pick_place
    model, data = env.sim.model, env.sim.data
    goal = observation["environment_state"][GOAL].astype(np.float64)
    corner, corner4 = (camera_geometry.jacobian(model, data, c, goal, SIZE) for c in ("corner", "corner4"))
    # Along corner's ray the marker does not move in corner's image: one camera cannot tell its depth.
    ray = goal - data.cam_xpos[model.camera("corner").id]
    assert np.abs(corner @ (ray / np.linalg.norm(ray))).max() < 1e-3 * np.abs(corner).max()
    assert camera_geometry.worst_direction([corner]) == 0.0
    assert camera_geometry.worst_direction([corner, corner4]) > 0.1  # px per cm: the two rays cross at an angle
    # The far-away corner2 moves it fewer pixels per centimetre than the close corner (half the resolution here).
    far = camera_geometry.jacobian(model, data, "corner2", goal, SIZE)
    assert np.linalg.norm(far, 2) < np.linalg.norm(corner, 2)


def test_a_point_behind_the_camera_or_out_of_frame_is_not_seen(pick_place):
    env, _ = pick_place
    model, data = env.sim.model, env.sim.data
    origin = data.cam_xpos[model.camera("topview").id]
    assert not camera_geometry.sees(model, data, "topview", origin + np.array([0.0, 0.0, 0.5]), SIZE)  # behind
    assert not camera_geometry.sees(model, data, "topview", origin + np.array([3.0, 0.0, -0.5]), SIZE)  # aside


def test_a_point_under_the_table_is_hidden(pick_place):
    env, observation = pick_place
    model, data = env.sim.model, env.sim.data
    below = observation["environment_state"][GOAL].astype(np.float64) * np.array([1.0, 1.0, 0.0]) - [0, 0, 0.1]
    (u, v), depth = camera_geometry.project(model, data, "topview", below, SIZE)
    assert depth > 0 and 0 <= u < SIZE and 0 <= v < SIZE  # in front and in frame: only the table is in the way
    assert not camera_geometry.sees(model, data, "topview", below, SIZE)


def test_reach_goal_is_located_by_corner_and_corner4_not_by_the_demo_cameras():
    """At reset the wrist camera looks at the table, so only corner2 sees reach's floating goal: depth unknown."""
    rows = camera_geometry.measure("reach", ["corner2", "gripperPOV", "corner", "corner4"],
                                   [["corner2", "gripperPOV"], ["corner", "corner4"]], starts=2, size=64)  # fmt: skip
    goal = next(row for row in rows if row["target"] == "goal")
    assert goal["corner2+gripperPOV"] == 0.0
    assert goal["corner+corner4"] > 0.2
    assert "gripperPOV 0" in goal["seen by (% of starts)"]
