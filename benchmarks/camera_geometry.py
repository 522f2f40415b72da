"""Where the cameras stand: which Meta-World cameras see each task's goal and object, and how well a pair locates them.

    .venv/bin/python benchmarks/camera_geometry.py [--tasks mt10] [--sets corner2+gripperPOV,...] [--starts 20]
    .venv/bin/python benchmarks/camera_geometry.py --tasks mt50 --name metaworld_camera_geometry_mt50

The goal heads (docs/benchmarks.md) locate goals on the table or on large objects to under a centimetre but miss
reach's and pick-place's goals, which float in the air, by ~5 cm. One camera sees a point only up to its depth along
the camera's ray; a second camera that sees it too fixes that depth, and how well depends on the angle between
their rays. This script asks the simulator, for each task's first `--starts` evaluation starts (seed 1000, as the
MT10 recipes evaluate), where the goal and the first object are, and for every camera:

- whether it sees the point: in front of it, inside the image, and not hidden (a ray from the camera meets no
  geometry more than `HIDDEN_MARGIN` before the point; the margin lets an object's own surface through);
- how many pixels the point moves per centimetre it moves (the projection's 2 × 3 Jacobian, pinhole model from
  MuJoCo's camera pose and field of view, at `--image_size`).

For a set of cameras the Jacobians of those that see the point are stacked; the smallest singular value is how many
pixels the point moves, in the set's images together, per centimetre along its *worst* direction. It is 0 when only
one camera sees the point (that direction is the ray's depth). The table gives its median over the starts.
Measured at reset: `gripperPOV` and `behindGripper` ride on the hand, so what they see changes once the arm moves.
Images are not rendered (smolvla turns some cameras' images by 180°, which changes neither quantity).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # after MUJOCO_GL

from benchmarks.pilot_oracle import GOAL, OBJECT
from benchmarks.report import report
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv, SimError
from smolvla.sim.rollout import episode_seed
from smolvla.sim.tasks import resolve_tasks

SETS = ["corner2+gripperPOV", "corner2", "corner+corner4", "corner3+corner4", "corner+corner3", "corner2+corner"]
HIDDEN_MARGIN = 0.03  # metres: geometry this close in front of the point is the point's own object
STEP = 1e-3  # metres: the finite difference of the Jacobian


def project(model, data, camera: str, point: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """(u, v) pixels of `point` in `camera`'s size × size image (MuJoCo's orientation), and its depth in metres."""
    index = model.camera(camera).id
    local = data.cam_xmat[index].reshape(3, 3).T @ (point - data.cam_xpos[index])  # camera looks along -z
    depth = -local[2]
    focal = size / 2 / np.tan(np.radians(model.cam_fovy[index]) / 2)
    return np.array([size / 2 + focal * local[0] / depth, size / 2 - focal * local[1] / depth]), float(depth)


def jacobian(model, data, camera: str, point: np.ndarray, size: int) -> np.ndarray:
    """(2, 3): pixels the point moves per centimetre along x, y, z (central differences)."""
    columns = []
    for axis in np.eye(3) * STEP:
        plus, _ = project(model, data, camera, point + axis, size)
        minus, _ = project(model, data, camera, point - axis, size)
        columns.append((plus - minus) / (2 * STEP) / 100)
    return np.stack(columns, axis=1)


def sees(model, data, camera: str, point: np.ndarray, size: int) -> bool:
    """In front of the camera, inside its image and not hidden behind other geometry."""
    (u, v), depth = project(model, data, camera, point, size)
    if depth <= 0 or not (0 <= u < size and 0 <= v < size):
        return False
    origin = data.cam_xpos[model.camera(camera).id].copy()
    distance = float(np.linalg.norm(point - origin))
    hit = mujoco.mj_ray(model, data, origin, (point - origin) / distance, None, 1, -1, np.zeros(1, np.int32))
    return hit < 0 or hit > distance - HIDDEN_MARGIN


def worst_direction(jacobians: list[np.ndarray]) -> float:
    """Pixels per centimetre along the point's worst direction in these cameras together (0 with fewer than two)."""
    if len(jacobians) < 2:
        return 0.0
    return float(np.linalg.svd(np.concatenate(jacobians), compute_uv=False)[-1])


def measure(task: str, cameras: list[str], sets: list[list[str]], starts: int, size: int) -> list[dict]:
    """One row per target (goal, object) of `task`: which cameras see it (% of starts) and each set's median
    worst-direction sensitivity."""
    env = MetaWorldEnv(MetaWorldConfig(task=task, image_size=size, cameras=()))
    model, data = env.sim.model, env.sim.data
    # Per target and camera, per start: the Jacobian where the camera sees the point, else None.
    found = {target: {camera: [] for camera in cameras} for target in ("goal", "object")}
    for start in range(starts):
        observation, _ = env.reset(seed=episode_seed(1000, task, start))
        state = observation["environment_state"].astype(np.float64)
        for target, part in (("goal", GOAL), ("object", OBJECT)):
            for camera in cameras:
                visible = sees(model, data, camera, state[part], size)
                found[target][camera].append(jacobian(model, data, camera, state[part], size) if visible else None)
    env.close()
    rows = []
    for target, per_camera in found.items():
        row = {"task": task, "target": target}
        shares = {c: round(100 * np.mean([j is not None for j in per_camera[c]])) for c in cameras}
        row["seen by (% of starts)"] = ", ".join(f"{c} {share}" for c, share in shares.items())
        for group in sets:
            per_start = [
                worst_direction([per_camera[c][i] for c in group if per_camera[c][i] is not None])
                for i in range(starts)
            ]
            row["+".join(group)] = round(float(np.median(per_start)), 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mt10", help="a task, a comma list or a suite (mt10, mt50)")
    parser.add_argument("--sets", default=",".join(SETS), help="camera sets, cameras joined by +, sets by commas")
    parser.add_argument("--starts", type=int, default=20, help="evaluation starts per task (seed 1000)")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--name", default="metaworld_camera_geometry", help="the result's name in benchmarks/results")
    args = parser.parse_args()
    sets = [group.split("+") for group in args.sets.split(",")]
    cameras = list(dict.fromkeys(c for group in sets for c in group))
    try:  # the environment's own check names the unknown cameras and the valid ones
        MetaWorldEnv(MetaWorldConfig(task="reach", image_size=8, cameras=tuple(cameras))).close()
    except SimError as error:
        sys.exit(f"camera_geometry: {error}")
    if args.starts < 1 or args.image_size < 8:
        sys.exit(f"camera_geometry: --starts must be ≥ 1 and --image_size ≥ 8, got {args.starts}, {args.image_size}")
    rows = [
        row for task in resolve_tasks(args.tasks) for row in measure(task, cameras, sets, args.starts, args.image_size)
    ]
    for target in ("goal", "object"):
        mean = {"task": "mean", "target": target, "seen by (% of starts)": ""}
        for name in ("+".join(group) for group in sets):
            mean[name] = round(float(np.mean([r[name] for r in rows if r["target"] == target])), 2)
        rows.append(mean)
    machine = {"script": "benchmarks/camera_geometry.py", "tasks": args.tasks, "starts": args.starts, "seed": 1000,
               "image_size": args.image_size, "unit": "pixels per cm, worst direction, median over starts"}  # fmt: skip
    report(args.name, machine, rows, {k: k for k in rows[0]})


if __name__ == "__main__":
    main()
