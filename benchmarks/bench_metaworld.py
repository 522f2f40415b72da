"""Meta-World at benchmark scale (MT10, MT50): collect → train → evaluate over the public commands, resumable after an
interruption at every stage and per task, reported by task and difficulty group against SmolVLA's published numbers.

    .venv/bin/python benchmarks/bench_metaworld.py [--config benchmarks/configs/metaworld_mt10.yaml]
        [--output_dir DIR] [--stop_after collect|train|eval]

The recipe (tasks, demonstrations per task, image size and cameras, the `smolvla train` settings, each task's share
of the training samples, evaluation) is a config file, so what produced a number is kept beside it. Stages:

1. collect: one scripted-expert dataset per task (`smolvla collect`), `<out>/data/<task>`; a task whose dataset was
   collected with these settings is kept, an interrupted one resumes inside `collect`;
2. train: one `smolvla train` over all task datasets, `<out>/train`; resumed from its last checkpoint;
3. eval: `smolvla eval` per task on unseen starts, `<out>/eval/<task>/eval_info.json`; a finished task is kept; for a
   task that failed an episode, that episode is rolled out again and recorded (`<out>/videos/`).

Each run adds its wall time per stage to `<out>/stages.json`, an interrupted stage's included (Ctrl-C or `kill`).
The report prints the table by task and difficulty group, writes `benchmarks/results/metaworld_<name>.json` and
`<out>/success.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report
from smolvla.atomic import atomic_write_text, save_figure
from smolvla.errors import ConfigError
from smolvla.flags import apply_mapping, load_config_file
from smolvla.sim.tasks import DIFFICULTIES, DIFFICULTY, resolve_tasks

CONFIG = Path(__file__).parent / "configs" / "metaworld_mt10.yaml"
STAGES = ("collect", "train", "eval")
# SmolVLA-0.45B on Meta-World MT50, success % by difficulty group (the SmolVLA paper, arXiv 2506.01844).
PUBLISHED = {"easy": 82.5, "medium": 41.8, "hard": 45.0, "very_hard": 60.0, "overall": 57.3}


@dataclass
class CollectRecipe:
    episodes_per_task: int = 30
    image_size: int = 64
    cameras: tuple[str, ...] = ("corner2", "gripperPOV")
    camera_pose: str = "metaworld"  # where corner2 stands ("lerobot": closer); evaluation renders the same
    # Tasks whose demonstrations start the articulated part anywhere short of success (`--env.vary_joint_start`);
    # evaluation keeps Meta-World's own starts.
    vary_joint_start: tuple[str, ...] = ()
    # Task → steps its demonstrations go on after their first success (`--env.steps_after_success`); evaluation
    # still ends at success.
    steps_after_success: dict[str, int] = field(default_factory=dict)
    # Task → (low, high) joint range its varied starts are drawn from instead of the env's default
    # (`--env.joint_start`); only for tasks in vary_joint_start.
    joint_start: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Task → (x, y, z) half-widths of the box its demonstrations' hand starts are drawn from
    # (`--env.hand_start_spread`); evaluation keeps Meta-World's hand start.
    hand_start_spread: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    num_workers: int = 2


@dataclass
class EvalRecipe:
    episodes: int = 10  # per task
    num_workers: int = 2
    max_steps: int = 500
    seed: int = 1000  # `smolvla eval`'s default starts, disjoint from collection's


@dataclass
class Recipe:
    name: str = "mt10"
    tasks: str = "mt10"  # a Meta-World task set (mt10, mt50, easy, ...) or comma-separated tasks
    output_dir: str = "outputs/metaworld-mt10"
    collect: CollectRecipe = field(default_factory=CollectRecipe)
    train: dict[str, Any] = field(default_factory=dict)  # `smolvla train` settings (nested: policy: {chunk_size: 10})
    # Share of the training samples per task, relative to the others (a task not named: 1). Empty: each task in
    # proportion to its frames, which starves the goal-conditioned tasks, whose demonstrations are the shortest.
    task_weights: dict[str, float] = field(default_factory=dict)
    eval: EvalRecipe = field(default_factory=EvalRecipe)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        raw = load_config_file(str(path))
        train = raw.pop("train", {})  # checked by `smolvla train`'s own flag parser, as flags
        weights = raw.pop("task_weights", {})
        if not isinstance(train, dict):
            raise ConfigError(f"{path}: train must be a mapping of `smolvla train` settings, got {train!r}")
        recipe = apply_mapping(cls(), raw)
        recipe.train, recipe.task_weights = train, weights
        tasks = resolve_tasks(recipe.tasks)
        if not set(recipe.collect.vary_joint_start) <= set(tasks):
            raise ConfigError(f"{path}: collect.vary_joint_start must name tasks of the recipe ({', '.join(tasks)})")
        if not set(recipe.collect.joint_start) <= set(recipe.collect.vary_joint_start):
            raise ConfigError(f"{path}: collect.joint_start must name tasks of collect.vary_joint_start")
        if not set(recipe.collect.hand_start_spread) <= set(tasks):
            raise ConfigError(f"{path}: collect.hand_start_spread must name tasks of the recipe ({', '.join(tasks)})")
        after = recipe.collect.steps_after_success
        if not all(task in tasks and n >= 0 for task, n in after.items()):
            raise ConfigError(
                f"{path}: collect.steps_after_success must map tasks of the recipe ({', '.join(tasks)}) to steps "
                f">= 0; got {after!r}"
            )
        valid = isinstance(weights, dict) and all(
            task in tasks and isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
            for task, w in weights.items()
        )
        if not valid or "weights" in train.get("dataset", {}):
            raise ConfigError(
                f"{path}: task_weights must map tasks of the recipe ({', '.join(tasks)}) to numbers >= 0, and "
                f"replaces train.dataset.weights; got {weights!r}"
            )
        return recipe

    def train_flags(self) -> list[str]:
        """The train settings as `smolvla train` flags (the sampling weights follow the task order of `tasks`)."""
        flags = [f"--{key}={value}" for key, value in _flatten(self.train).items()]
        if self.task_weights:
            weights = [self.task_weights.get(task, 1) for task in resolve_tasks(self.tasks)]
            flags.append(f"--dataset.weights={','.join(f'{w:g}' for w in weights)}")
        return flags


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = ",".join(str(v) for v in value)
        else:
            out[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


class StageLog:
    """`<out>/stages.json`: wall seconds per stage and per task, added up over runs, written atomically."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, stage: str, seconds: float, task: str | None = None) -> None:
        entry = self.data.setdefault(stage, {"seconds": 0.0, "tasks": {}})
        entry["seconds"] = round(entry["seconds"] + seconds, 2)
        if task is not None:
            entry["tasks"][task] = round(entry["tasks"].get(task, 0.0) + seconds, 2)
        atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def env_config(recipe: Recipe, task: str):
    """The simulator set-up of one task as the recipe collects it (cameras, image size, camera pose)."""
    from smolvla.sim.metaworld_env import MetaWorldConfig

    return MetaWorldConfig(task=task, cameras=tuple(recipe.collect.cameras), image_size=recipe.collect.image_size,
                           camera_pose=recipe.collect.camera_pose)  # fmt: skip


def collect_stage(recipe: Recipe, tasks: list[str], out: Path, log: StageLog) -> list[str]:
    from smolvla.sim.collect import CollectConfig, collect, collected_with

    roots = []
    for task in tasks:
        root = out / "data" / task
        base = env_config(recipe, task)
        env = dataclasses.replace(
            base,
            vary_joint_start=task in recipe.collect.vary_joint_start,
            steps_after_success=recipe.collect.steps_after_success.get(task, 0),
            joint_start=recipe.collect.joint_start.get(task),
            hand_start_spread=recipe.collect.hand_start_spread.get(task, base.hand_start_spread),
        )
        config = CollectConfig(env=env, episodes_per_task=recipe.collect.episodes_per_task,
                               output_dir=str(root), num_workers=recipe.collect.num_workers)  # fmt: skip
        roots.append(str(root))
        if collected_with(root, config):
            continue
        started = time.perf_counter()
        print(f"[collect] {task}: {recipe.collect.episodes_per_task} demonstrations → {root}", flush=True)
        try:
            collect(config)
        finally:  # an interrupted stage's time counts too: the total is what the benchmark cost
            log.add("collect", time.perf_counter() - started, task)
    return roots


def train_stage(recipe: Recipe, roots: list[str], out: Path, log: StageLog) -> Path:
    from smolvla.train.checkpoint import LAST, checkpoints_dir
    from smolvla.train.config import TrainConfig
    from smolvla.train.trainer import train

    run = out / "train"
    flags = [*recipe.train_flags(), f"--dataset.root={','.join(roots)}", f"--output_dir={run}"]
    steps = TrainConfig.from_flags(flags).steps
    final = checkpoints_dir(run) / f"{steps:06d}" / "pretrained_model"
    if final.is_dir():
        return final
    started = time.perf_counter()
    resume = (checkpoints_dir(run) / LAST).exists()
    print(f"[train] {steps} steps on {len(roots)} datasets → {run}{' (resumed)' if resume else ''}", flush=True)
    try:
        train(TrainConfig.from_flags([*flags, f"--resume={resume}"]))
    finally:
        log.add("train", time.perf_counter() - started)
    return final


def eval_config(recipe: Recipe, policy: Path, task: str, output_dir: Path, instruction: str | None = None):
    """The `smolvla eval` settings of one task under the recipe (told `instruction` instead of its own, if given)."""
    from smolvla.eval.evaluate import EvalConfig, EvalLoop, PolicyRef

    env = dataclasses.replace(EvalConfig().env, task=task, max_steps=recipe.eval.max_steps, instruction=instruction,
                              camera_pose=recipe.collect.camera_pose)  # fmt: skip
    return EvalConfig(policy=PolicyRef(path=str(policy)), env=env, seed=recipe.eval.seed, output_dir=str(output_dir),
                      eval=EvalLoop(recipe.eval.episodes, recipe.eval.num_workers, videos_per_task=0))  # fmt: skip


def eval_stage(recipe: Recipe, policy: Path, tasks: list[str], out: Path, log: StageLog) -> dict[str, dict]:
    from smolvla.eval.evaluate import evaluate

    results = {}
    for task in tasks:
        info = out / "eval" / task / "eval_info.json"
        summary = json.loads(info.read_text()) if info.is_file() else None
        config = eval_config(recipe, policy, task, info.parent)
        started = time.perf_counter()
        try:
            if summary is None:
                print(f"[eval] {task}: {recipe.eval.episodes} episodes", flush=True)
                summary = evaluate(config, progress=False)
            if "failure_video" not in summary:  # (an interruption after the evaluation only redoes the video)
                summary["failure_video"] = failure_video(policy, config, summary, out / "videos")
                atomic_write_text(info, json.dumps(summary, indent=2) + "\n")
        finally:
            if time.perf_counter() - started > 0.5:  # a task only read back costs nothing
                log.add("eval", time.perf_counter() - started, task)
        results[task] = summary
    return results


def failure_video(policy: Path, config, summary: dict, directory: Path) -> str | None:
    """The first failed episode of the task, rolled out again (same seed) and recorded; None when none failed."""
    from smolvla.eval.agent import AgentFactory
    from smolvla.eval.evaluate import env_for
    from smolvla.eval.report import write_videos
    from smolvla.sim.rollout import Job, run_jobs

    failed = next((e for e in summary["episodes"] if not e["success"]), None)
    if failed is None:
        return None
    agent = AgentFactory(str(policy))()
    env = env_for(agent, config.env)
    episodes = list(run_jobs([Job(failed["task"], failed["index"], failed["seed"], record=True)], env, lambda: agent))
    (path,) = write_videos(episodes, env, directory)
    return path


def table(results: dict[str, dict]) -> tuple[list[dict], dict[str, float]]:
    """Rows per task, then per difficulty group and overall (task-averaged, as the SmolVLA paper reports MT50)."""
    rows = []
    for task, summary in results.items():
        stats = summary["per_task"][task]
        rows.append({"task": task, "difficulty": DIFFICULTY[task], "success": round(100 * stats["success_rate"], 1),
                     "mean_length": round(stats["mean_length"], 1), "published": "",
                     "video": summary.get("failure_video") or ""})  # fmt: skip
    groups, counts = {}, {}
    for level in DIFFICULTIES:
        mine = [r["success"] for r in rows if r["difficulty"] == level]
        if mine:
            groups[level], counts[level] = round(sum(mine) / len(mine), 1), len(mine)
    groups["overall"], counts["overall"] = round(sum(r["success"] for r in rows) / len(rows), 1), len(rows)
    rows += [{"task": f"**{name}** ({counts[name]} tasks)", "difficulty": name, "success": value, "mean_length": "",
              "published": PUBLISHED.get(name, ""), "video": ""} for name, value in groups.items()]  # fmt: skip
    return rows, groups


def plot(rows: list[dict], groups: dict[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [r for r in rows if not r["task"].startswith("**")]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(tasks) + 1.5))
    colors = {level: f"C{i}" for i, level in enumerate(DIFFICULTIES)}
    ax.barh([r["task"] for r in tasks], [r["success"] for r in tasks], color=[colors[r["difficulty"]] for r in tasks])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("success (%)")
    ax.set_title(", ".join(f"{k} {v:.1f} %" for k, v in groups.items()), fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), fontsize=7, loc="lower right")
    return save_figure(fig, path)


def run(recipe: Recipe, stop_after: str | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The whole benchmark, or its stages up to `stop_after`; every finished piece of an earlier run is reused.
    `notes`: what else shaped the run (a pilot's changed preset), recorded beside the recipe in the result JSON.
    Stopped after training, it returns the trained policy's directory (`{"policy": path}`)."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(dataclasses.asdict(recipe), indent=2) + "\n")
    tasks, log = resolve_tasks(recipe.tasks), StageLog(out)
    roots = collect_stage(recipe, tasks, out, log)
    if stop_after == "collect":
        return None
    policy = train_stage(recipe, roots, out, log)
    if stop_after == "train":
        return {"policy": policy}
    results = eval_stage(recipe, policy, tasks, out, log)
    rows, groups = table(results)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "recipe": dataclasses.asdict(recipe),
        "policy": str(policy),
        "wall_s": {stage: log.data.get(stage, {}).get("seconds", 0.0) for stage in STAGES},
        "groups": groups,
        "chart": str(plot(rows, groups, out / "success.png")),
        **(notes or {}),
    }
    columns = {"task": "task", "difficulty": "difficulty", "success %": "success", "mean length": "mean_length",
               "SmolVLA-0.45B %": "published", "failure video": "video"}  # fmt: skip
    report(f"metaworld_{recipe.name}", machine, rows, columns)
    minutes = {stage: round(s / 60, 1) for stage, s in machine["wall_s"].items()}
    print(f"wall time (min): {minutes}, total {sum(minutes.values()):.1f}")
    return {"rows": rows, "groups": groups, "wall_s": machine["wall_s"]}


def exit_on_sigterm() -> None:
    """Make `kill` (SIGTERM) unwind the run as Ctrl-C does: Python's default dies on the spot, skipping the `finally`
    that adds an interrupted stage's wall time to stages.json, so a long run stopped that way under-reports it."""

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(CONFIG), help="the recipe (YAML or JSON)")
    parser.add_argument("--output_dir", default=None, help="overrides the recipe's")
    parser.add_argument("--stop_after", choices=STAGES, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    exit_on_sigterm()
    recipe = Recipe.load(args.config)
    if args.output_dir:
        recipe.output_dir = args.output_dir
    run(recipe, args.stop_after)


if __name__ == "__main__":
    main()
