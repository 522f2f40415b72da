"""Reflow and one-step distillation on Meta-World: denoising steps vs success, action error and latency.

    .venv/bin/python benchmarks/bench_reflow.py [--teacher DIR] [--reflow_steps 900] [--distill_steps 900]
        [--episodes 10] [--step_counts 1,2,5,10] [--out outputs/reflow-bench]

1. data: the continual benchmark's four Meta-World datasets (collected if missing, 30 expert episodes per task);
2. the 1-RF teacher: `--teacher`, or trained here on all four tasks from scratch (1800 steps × 32, the continual
   benchmark's multi-task recipe);
3. `smolvla reflow` (one round, cached pairs) → 2-RF, then `smolvla distill` from 2-RF → a one-step policy;
4. offline, on the held-out episodes: action MSE against the ground truth and against the 10-step teacher at
   1/2/3/5/10 steps, trajectory straightness, chunk latency at batch 1;
5. closed loop: Meta-World success of each model at each of `--step_counts` (unseen starts, `smolvla eval`).

Prints a table, writes benchmarks/results/reflow_<device>.json and <out>/reflow_steps.png (success and latency
against steps). Reruns reuse the datasets, finished training runs and finished evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_continual import CONFIG, collect_tasks
from benchmarks.report import report

OFFLINE_STEPS = [1, 2, 3, 5, 10]
COMMON = ["--batch_size=32", "--seed=0", "--num_workers=1", "--log_freq=50", "--val_freq=0", "--keep_last=1",
          "--dataset.cache_frames=true", "--dataset.val_fraction=0.1"]  # fmt: skip


def schedule(steps: int, lr: float) -> list[str]:
    return [f"--steps={steps}", f"--save_freq={steps}", f"--policy.optimizer_lr={lr}",
            f"--policy.scheduler_warmup_steps={steps // 20}", f"--policy.scheduler_decay_steps={steps}",
            f"--policy.scheduler_decay_lr={lr / 20}"]  # fmt: skip


def train_teacher(roots: list[str], out: Path) -> Path:
    from smolvla.train.checkpoint import LAST, checkpoints_dir
    from smolvla.train.config import TrainConfig
    from smolvla.train.trainer import train

    final = checkpoints_dir(out) / "001800" / "pretrained_model"
    if final.is_dir():
        return final
    flags = [f"--dataset.root={','.join(roots)}", f"--output_dir={out}", *COMMON, *schedule(1800, 1e-3),
             "--policy.image_size=64", "--policy.n_action_steps=5", "--policy.freeze_vision_encoder=false",
             "--policy.train_expert_only=false", f"--resume={(checkpoints_dir(out) / LAST).exists()}"]  # fmt: skip
    return train(TrainConfig.from_flags(flags)).checkpoint / "pretrained_model"


def closed_loop(policy: Path, steps: int, tasks: list[str], episodes: int, out: Path) -> dict:
    from smolvla.eval.evaluate import EvalConfig, EvalLoop, PolicyRef, evaluate
    from smolvla.sim.metaworld_env import MetaWorldConfig

    info = out / "eval_info.json"
    if info.is_file():
        return json.loads(info.read_text())
    return evaluate(
        EvalConfig(
            policy=PolicyRef(path=str(policy), num_steps=steps),
            env=MetaWorldConfig(task=",".join(tasks), max_steps=500),
            eval=EvalLoop(n_episodes=episodes, num_workers=2, videos_per_task=0),
            output_dir=str(out),
        ),
        progress=False,
    )


def plot(rows: list[dict], step_counts: list[int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smolvla.atomic import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        left.plot([r["steps"] for r in mine], [100 * r["success"] for r in mine], marker="o", label=name)
        right.plot([r["steps"] for r in mine], [r["chunk_ms"] for r in mine], marker="o", label=name)
    for ax, label in ((left, "Meta-World success (%)"), (right, "chunk latency, batch 1 (ms)")):
        ax.set_xscale("log")
        ax.set_xticks(step_counts, [str(n) for n in step_counts])
        ax.set_xlabel("denoising steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def main() -> None:
    from smolvla.continual.config import ContinualConfig
    from smolvla.flags import load_config_file
    from smolvla.policy import SmolVLAPolicy
    from smolvla.processors import load_processors
    from smolvla.reflow.measure import action_errors, chunk_latency
    from smolvla.reflow.run import DistillConfig, ReflowConfig, run_distill, run_reflow
    from smolvla.train.config import DatasetArgs
    from smolvla.train.data import load_train_data

    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default=None, help="a 1-RF pretrained_model; default: train one here")
    parser.add_argument("--reflow_steps", type=int, default=900)
    parser.add_argument("--distill_steps", type=int, default=900)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--episodes", type=int, default=10, help="closed-loop episodes per task and setting")
    parser.add_argument("--step_counts", default="1,2,5,10")
    parser.add_argument("--out", default="outputs/reflow-bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    step_counts = [int(n) for n in args.step_counts.split(",")]

    continual = ContinualConfig.from_mapping(load_config_file(CONFIG))
    collect_s = collect_tasks(continual, 30, 64, ("corner2", "gripperPOV"))
    roots = [t.root for t in continual.tasks]
    tasks = [t.sim_task for t in continual.tasks]
    started = time.perf_counter()
    teacher = Path(args.teacher) if args.teacher else train_teacher(roots, out / "teacher")
    teacher_s = time.perf_counter() - started

    data_flags = [f"--dataset.root={','.join(roots)}", *COMMON, "--pairs_per_frame=4"]
    started = time.perf_counter()
    reflow = ReflowConfig.from_flags([*data_flags, f"--output_dir={out / 'reflow'}", f"--policy.teacher_path={teacher}",
                                      *schedule(args.reflow_steps, args.lr)])  # fmt: skip
    (rf2,) = run_reflow(reflow)
    reflow_s = time.perf_counter() - started
    started = time.perf_counter()
    distill = DistillConfig.from_flags([*data_flags, f"--output_dir={out / 'distill'}", f"--policy.teacher_path={rf2}",
                                        *schedule(args.distill_steps, args.lr)])  # fmt: skip
    one_step = run_distill(distill)
    distill_s = time.perf_counter() - started

    models = {"1-RF (teacher)": teacher, "2-RF": rf2, "2-RF distilled": one_step}
    policies = {name: SmolVLAPolicy.from_pretrained(path).eval() for name, path in models.items()}
    pre, _ = load_processors(teacher)
    held_out = load_train_data(DatasetArgs(root=tuple(roots), val_fraction=0.1), 10, seed=0).val
    offline = action_errors(policies, pre, held_out, OFFLINE_STEPS, reference="1-RF (teacher)")
    sample = pre(torch.utils.data.default_collate([held_out[0]]))
    # Latency first, for every policy back to back, before any evaluation worker runs.
    latency = {name: chunk_latency(policy, sample, step_counts, repeats=30) for name, policy in policies.items()}
    rows = []
    for name in policies:
        for n in step_counts:
            tag = name.split(" ")[0] + ("-distilled" if "distilled" in name else "")
            summary = closed_loop(models[name], n, tasks, args.episodes, out / "eval" / f"{tag}_{n}steps")
            rows.append({
                "model": name, "steps": n,
                "success": round(summary["overall"]["success_rate"], 3),
                "per_task": {t: round(v["success_rate"], 2) for t, v in summary["per_task"].items()},
                "mse_data": round(offline[name]["mse_data"][n], 4) if n in offline[name]["mse_data"] else None,
                "mse_teacher10": round(offline[name]["mse_reference"][n], 4) if n in OFFLINE_STEPS else None,
                "straightness": round(offline[name]["straightness"], 4),
                "chunk_ms": round(latency[name][n], 1),
            })  # fmt: skip
            print(rows[-1])
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "tasks": tasks,
        "episodes_per_setting_per_task": args.episodes,
        "teacher": str(teacher),
        "minutes_this_run": {  # finished stages are reused: 0 on a rerun
            "collect": round(collect_s / 60, 1),
            "teacher": round(teacher_s / 60, 1),
            "reflow": round(reflow_s / 60, 1),
            "distill": round(distill_s / 60, 1),
        },
        "offline": offline,
        "plot": str(plot(rows, step_counts, out / "reflow_steps.png")),
        "latency_ms": latency,
    }
    columns = {
        "model": "model", "steps": "steps", "success": "success", "MSE vs data": "mse_data",
        "MSE vs 10-step teacher": "mse_teacher10", "straightness": "straightness", "chunk ms": "chunk_ms",
    }  # fmt: skip
    report(f"reflow_{machine['device']}", machine, rows, columns)


if __name__ == "__main__":
    main()
