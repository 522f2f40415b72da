"""What a language-swap policy does, not only whether the scene's task succeeds: per episode, told its own instruction
and its partner's, whether the gripper closed, how low the hand went and where the object (the handle, the lock)
started and ended.

    .venv/bin/python benchmarks/swap_trace.py --config benchmarks/configs/language_swap_5400.yaml \
        --tasks handle-press --episodes 6

`bench_language_swap.py` scores the scene's task: a policy told to pull a handle that starts up, which then presses
it, counts as not following language. The trace tells two failures apart: the wrong skill (the gripper does what
the scene's task needs) and the right skill run where its demonstrations went (the pull's grasp, driven down to
where a pulled handle always sat, which presses a raised one). Same starts as the evaluation (its seed). Writes
benchmarks/results/<recipe name>_trace.json (`_trace_expert.json` for `--policy expert`: the scripted expert, which
reads the task from the instruction, as the reference). A run of `pilot_goal_state.py --swap` is traced through its
goal head.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_language_swap import pairs_of
from benchmarks.bench_metaworld import Recipe, env_config
from benchmarks.pilot_aux_goal import HEAD
from benchmarks.pilot_goal_state import GoalFedFactory
from benchmarks.pilot_oracle import OBJECT
from benchmarks.report import report
from smolvla.errors import ConfigError
from smolvla.eval.agent import BUILTIN_AGENTS, AgentFactory
from smolvla.sim.metaworld_env import MetaWorldEnv
from smolvla.sim.rollout import episode_seed, run_episode
from smolvla.sim.tasks import instruction, resolve_tasks
from smolvla.train.checkpoint import LAST, PRETRAINED_MODEL, checkpoints_dir

CLOSED = 0.5  # the state's gripper opening: 1 open, ~0.27 closed on nothing


def trace(agent, recipe: Recipe, task: str, told: str, episodes: int) -> dict:
    """`episodes` rollouts of `task` told `told`'s instruction, summarised (hand and object heights in cm)."""
    told_config = {"instruction": instruction(told), "max_steps": recipe.eval.max_steps}  # as the evaluation's cell
    env = MetaWorldEnv(dataclasses.replace(env_config(recipe, task), **told_config))
    rows = []
    for index in range(episodes):
        episode = run_episode(env, agent, episode_seed(recipe.eval.seed, task, index), index, record=True)
        state, scene = episode.frames["observation.state"], episode.frames["observation.environment_state"]
        rows.append((episode.success, state[:, 3].min() < CLOSED, state[:, 2].min(), scene[0, OBJECT][2],
                     scene[:, OBJECT][:, 2].min()))  # fmt: skip
    env.close()
    success, closed, hand, start, lowest = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    columns = {"success %": success, "gripper closed %": closed, "hand lowest cm": hand, "object start cm": start,
               "object lowest cm": lowest}  # fmt: skip
    return {"task": task, "told": told} | {name: round(100 * float(x.mean()), 1) for name, x in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the bench_language_swap recipe whose policy is traced")
    parser.add_argument("--tasks", default=None, help="comma-separated scenes to trace (default: every task)")
    parser.add_argument("--policy", default=None, help=f"a checkpoint or one of {BUILTIN_AGENTS} (default: the run's)")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe.load(args.config)
    partners = pairs_of(resolve_tasks(recipe.tasks))
    tasks = args.tasks.split(",") if args.tasks else list(partners)
    if any(task not in partners for task in tasks):
        sys.exit(f"{parser.prog}: --tasks must be among {list(partners)}")
    run = Path(recipe.output_dir) / "train"
    policy = args.policy or str(checkpoints_dir(run) / LAST / PRETRAINED_MODEL)
    # A run trained by pilot_goal_state keeps its goal head beside its checkpoints: its policy acts through it.
    factory = GoalFedFactory if (run / HEAD).is_file() else AgentFactory
    try:
        agent = factory(policy)()
    except ConfigError as error:
        sys.exit(f"{parser.prog}: {error} (run bench_language_swap.py with this config first)")
    rows = [trace(agent, recipe, task, told, args.episodes) for task in tasks for told in (task, partners[task])]
    name = f"{recipe.name}_trace" + (f"_{args.policy}" if args.policy in BUILTIN_AGENTS else "")
    machine = {"recipe": recipe.name, "policy": policy, "episodes": args.episodes, "seed": recipe.eval.seed}
    report(name, machine, rows, {key: key for key in rows[0]})


if __name__ == "__main__":
    main()
