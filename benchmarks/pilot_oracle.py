"""Privileged-goal pilot: `bench_metaworld.py` with the task's goal position appended to the robot state.

    .venv/bin/python benchmarks/pilot_oracle.py --config benchmarks/configs/metaworld_pilots/oracle_goal.yaml

reach, push and pick-place stay at chance in every recipe this CPU affords (docs/benchmarks.md), and the pilots so
far changed only what the policy sees. This one removes seeing from the question: the state becomes LeRobot's 4-D
`agent_pos` plus the goal's xyz (`environment_state[36:39]`, what Meta-World's scripted experts read), so the
policy is told the goal. If it then solves reach, what is missing is reading the goal from pixels (a vision
problem: camera, resolution, tower, pretraining); if it still does not, the policy cannot use a goal it is given
at this step budget, and no camera will help. `--object` also appends the first object's xyz
(`environment_state[4:7]`: the puck, the peg), which push, pick-place and peg-insert-side must find too: told both,
what is left is acting on them. The change is made to the simulator class in this process, so the
recipe must collect and evaluate in-process (`num_workers: 1`): spawned workers would import the unchanged class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_metaworld
from smolvla.sim.metaworld_env import STATE_NAMES, MetaWorldEnv

GOAL = slice(36, 39)  # Meta-World's goal xyz in its 39-D observation (goal-observable mode, which smolvla uses)
GOAL_NAMES = ["goal_x", "goal_y", "goal_z"]
OBJECT = slice(4, 7)  # the first object's xyz (the puck, the peg, the door handle)
OBJECT_NAMES = ["object_x", "object_y", "object_z"]


def tell_goal(with_object: bool = False) -> list[str]:
    """Make every `MetaWorldEnv` in this process report `agent_pos` as hand xyz + gripper + goal xyz (7-D), then the
    object's xyz (10-D) when asked; returns the state's names."""
    observe, features = MetaWorldEnv._observation, MetaWorldEnv.dataset_features
    told = [GOAL, OBJECT] if with_object else [GOAL]
    names = STATE_NAMES + GOAL_NAMES + (OBJECT_NAMES if with_object else [])

    def _observation(self, state: np.ndarray) -> dict:
        observation = observe(self, state)
        extra = [observation["environment_state"][part] for part in told]
        observation["agent_pos"] = np.concatenate([observation["agent_pos"], *extra]).astype(np.float32)
        return observation

    def dataset_features(self) -> dict:
        out = features(self)
        out["observation.state"] = {"dtype": "float32", "shape": [len(names)], "names": names}
        return out

    MetaWorldEnv._observation = _observation
    MetaWorldEnv.dataset_features = dataset_features
    return names


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a bench_metaworld recipe collecting and evaluating in-process")
    parser.add_argument("--object", action="store_true", help="also tell the first object's xyz")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_metaworld.exit_on_sigterm()
    recipe = bench_metaworld.Recipe.load(args.config)
    if recipe.collect.num_workers != 1 or recipe.eval.num_workers != 1:
        sys.exit(f"pilot_oracle: {args.config} must set collect.num_workers and eval.num_workers to 1 (in-process)")
    names = tell_goal(with_object=args.object)
    bench_metaworld.run(recipe, notes={"state": names})


if __name__ == "__main__":
    main()
