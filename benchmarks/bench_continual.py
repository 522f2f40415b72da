"""Continual learning on Meta-World: sequential fine-tuning vs replay vs multi-task, with forgetting measured.

    .venv/bin/python benchmarks/bench_continual.py [--config benchmarks/configs/continual_metaworld.yaml]
        [--methods sequential,replay,multitask,replay-budget] [--budget 0.1] [--episodes_per_task 30]

Collects scripted-expert demos per task (once), then runs `smolvla continual` with each method on the same config
(`replay-budget`: replay with a bounded buffer of `--budget` of each earlier task's episodes, in its own directory)
and prints one table: per-method success matrix summary, FWT / NBT / AUC, final success and wall times. Writes
benchmarks/results/continual_<device>.json; each method's run directory keeps its heat-map and TensorBoard log.
Reruns reuse the datasets and every finished stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report

CONFIG = Path(__file__).parent / "configs" / "continual_metaworld.yaml"


def collect_tasks(config, episodes: int, image_size: int, cameras: tuple[str, ...]) -> float:
    """One dataset per task (collection seed 0; evaluation uses other seeds). Returns seconds spent."""
    from smolvla.sim.collect import CollectConfig, collect
    from smolvla.sim.metaworld_env import MetaWorldConfig

    started = time.perf_counter()
    for task in config.tasks:
        if Path(task.root).exists():
            continue
        env = MetaWorldConfig(task=task.sim_task, cameras=cameras, image_size=image_size)
        collect(CollectConfig(env=env, episodes_per_task=episodes, output_dir=task.root, num_workers=2))
    return time.perf_counter() - started


def _replay_label(config) -> str:
    if config.method != "replay":
        return "—"
    shares = [1.0 - config.mixture(k)[s.task] for k, s in enumerate(config.stages)]
    buffer = "whole datasets" if config.replay.strategy == "full" else f"{config.replay.budget:.0%} of episodes"
    return f"≤ {max(shares):.0%} of batches; {buffer}"


def main() -> None:
    from smolvla.continual.config import ContinualConfig
    from smolvla.continual.runner import run_continual
    from smolvla.flags import load_config_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--methods", default="sequential,replay,multitask")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--episodes_per_task", type=int, default=30)
    parser.add_argument("--cameras", default="corner2,gripperPOV")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = ContinualConfig.from_mapping(load_config_file(args.config))
    base.validate()
    image_size = base.train.policy.image_size or 64
    collect_s = collect_tasks(base, args.episodes_per_task, image_size, tuple(args.cameras.split(",")))
    rows = []
    for method in args.methods.split(","):
        config = ContinualConfig.from_mapping(load_config_file(args.config))
        config.method = method.removesuffix("-budget")
        if method.endswith("-budget"):
            config.replay.strategy, config.replay.budget = "budget", args.budget
            config.output_dir = f"{config.output_dir}-budget{args.budget:g}"
        started = time.perf_counter()
        results = run_continual(config)
        m = results["metrics"] or {}
        final = results["success_matrix"][-1]
        rows.append({
            "method": method,
            "replay": _replay_label(config),
            "final_success": " / ".join("—" if v is None else f"{v:.1f}" for v in final),
            "final_mean": round(results["final_mean_success"], 3),
            "FWT": None if not m else round(m["FWT"], 3),
            "NBT": None if not m else round(m["NBT"], 3),
            "AUC": None if not m else round(m["AUC"], 3),
            "train_min": round(results["train_s"] / 60, 1),
            "eval_min": round(results["eval_s"] / 60, 1),
            "wall_min_this_run": round((time.perf_counter() - started) / 60, 1),
            "success_matrix": results["success_matrix"],
            "loss_matrix": results["loss_matrix"],
        })  # fmt: skip
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "collect_s": round(collect_s, 1),
        "tasks": [t.id for t in base.tasks],
    }
    columns = {
        "method": "method", "replay": "replay", "final success per task": "final_success", "mean": "final_mean",
        "FWT": "FWT", "NBT": "NBT", "AUC": "AUC", "train min": "train_min", "eval min": "eval_min",
    }  # fmt: skip
    report(f"continual_{machine['device']}", machine, rows, columns)


if __name__ == "__main__":
    main()
