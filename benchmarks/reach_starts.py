"""Where the reach pilots' solved starts lie: is a success luck, memory or reading the goal?

    .venv/bin/python benchmarks/reach_starts.py [outputs/pilot-reach-128px outputs/pilot-reach-50]

The 128 px reach pilot solved 11 of its 20 evaluation starts (seed 1000) but 3 of 40 others (seed 3000). For every
evaluated episode of each pilot directory (`eval/reach` and `reeval-seed*`), the episode's seed is reset again to
recover its goal, and solved and failed starts are compared on three distances: to the mean goal (a policy that
ignores the goal and heads for the box's middle), to the nearest goal among the pilot's own demonstrations (a
policy that memorised them) and to the puck (a policy that mistakes the puck for the goal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")
from benchmarks.report import report
from smolvla.sim.metaworld_env import MetaWorldConfig, MetaWorldEnv

PILOTS = ["outputs/pilot-reach-128px", "outputs/pilot-reach-50"]


def placement(env: MetaWorldEnv, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The goal and puck positions a reset with `seed` draws (the hand always starts at the same place)."""
    env.reset(seed=seed)
    return np.array(env.sim._target_pos), np.array(env.sim._get_pos_objects()[:3])


def mean_cm(distances: np.ndarray, mask: np.ndarray) -> float | str:
    return round(100 * float(distances[mask].mean()), 1) if mask.any() else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pilots", nargs="*", default=PILOTS, help="bench_metaworld output directories of reach")
    args = parser.parse_args()
    env = MetaWorldEnv(MetaWorldConfig(task="reach", cameras=()))
    rows = []
    for pilot in map(Path, args.pilots):
        demos = json.loads((pilot / "data/reach/meta/smolvla_collect.json").read_text())["episodes"]
        demo_goals = np.stack([placement(env, d["seed"])[0] for d in demos])
        seen = set()  # a re-evaluation on the pilot's own seed repeats its evaluation exactly: listed once
        for info in sorted([pilot / "eval/reach/eval_info.json", *pilot.glob("reeval-seed*/eval_info.json")]):
            evaluation = json.loads(info.read_text()) if info.is_file() else None
            if evaluation is None or evaluation["config"]["seed"] in seen:
                continue
            seen.add(evaluation["config"]["seed"])
            episodes = evaluation["episodes"]
            solved = np.array([e["success"] for e in episodes])
            goals, pucks = map(np.stack, zip(*(placement(env, e["seed"]) for e in episodes), strict=True))
            to_mean = np.linalg.norm(goals - goals.mean(0), axis=1)
            to_demo = np.linalg.norm(goals[:, None] - demo_goals[None], axis=2).min(1)
            to_puck = np.linalg.norm(goals - pucks, axis=1)
            row = {"pilot": pilot.name, "seed": evaluation["config"]["seed"], "demos": len(demos),
                   "starts": len(episodes), "success": round(100 * float(solved.mean()), 1)}  # fmt: skip
            for name, d in (("mean goal", to_mean), ("nearest demo goal", to_demo), ("puck", to_puck)):
                row[f"{name} cm (solved / failed)"] = f"{mean_cm(d, solved)} / {mean_cm(d, ~solved)}"
            rows.append(row)
    env.close()
    report("metaworld_reach_starts", {"script": "benchmarks/reach_starts.py"}, rows, {k: k for k in rows[0]})


if __name__ == "__main__":
    main()
