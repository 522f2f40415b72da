"""Fine-tuning a multi-task checkpoint onto a new Meta-World task: full vs LoRA, augmentation on vs off, success vs
validation loss during training. Every stage runs the public commands (`smolvla collect / train / eval`).

    .venv/bin/python benchmarks/bench_finetune.py [--base outputs/demo/train/checkpoints/last/pretrained_model]
        [--task drawer-open] [--steps 600] [--episodes 20] [--work outputs/bench_finetune]

The base is the demo's 4-task checkpoint (`smolvla demo`; run it first), which never saw `--task` (drawer-open: the
drawer-close scene told to do the opposite; the base succeeds 0/5 there). Runs, from that base on `--task`'s 30
expert demos (64 px, the demo's two cameras), each with `--eval_freq` (success on the new task during training):
  full      every weight trained (as the demo trained the base), lr 1e-3
  lora      LoRA r=16 on LeRobot's default targets (expert q/v, the action/state projections), lr 1e-2
  full+aug  `full` with `--dataset.image_transforms.enable=true`
Each final checkpoint is then evaluated on `--episodes` unseen starts of the new task in three views: as trained,
with the corner camera moved 8 cm (`--env.camera_offset`), and with the light at 50 % (`--env.light_scale`).
Reported: trainable parameters, seconds per step, peak resident memory of the training process, successes, and the
eval-in-training curve against validation loss (a PNG beside the JSON). Stages already done are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.report import RESULTS, report  # noqa: E402

CAMERAS = "corner2,gripperPOV"
VIEWS = {"trained": [], "moved camera": ["--env.camera_offset=0.0,0.08,0.0"], "light 50%": ["--env.light_scale=0.5"]}
RUNS = {
    "full": ["--policy.train_expert_only=false", "--policy.freeze_vision_encoder=false", "--policy.optimizer_lr=1e-3"],
    "lora": ["--peft.method_type=LORA", "--peft.r=16", "--peft.lora_alpha=16", "--policy.optimizer_lr=1e-2"],
    "full+aug": ["--policy.train_expert_only=false", "--policy.freeze_vision_encoder=false",
                 "--policy.optimizer_lr=1e-3", "--dataset.image_transforms.enable=true"],
}  # fmt: skip


def smolvla(*args: str) -> tuple[float, float]:
    """Run one command; returns (seconds, peak resident MiB of that process)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "smolvla.cli", *args], env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"smolvla {args[0]} failed: {' '.join(args)}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def trainable(checkpoint: Path) -> int:
    """Parameters that trained: the adapter's tensors, or the full policy's non-frozen ones."""
    from safetensors.torch import load_file

    if (checkpoint / "adapter_model.safetensors").is_file():
        return sum(t.numel() for t in load_file(str(checkpoint / "adapter_model.safetensors")).values())
    from smolvla import SmolVLAPolicy

    return SmolVLAPolicy.from_pretrained(checkpoint).num_parameters(trainable_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="outputs/demo/train/checkpoints/last/pretrained_model")
    parser.add_argument("--task", default="drawer-open")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--episodes", type=int, default=20, help="final evaluation episodes per view")
    parser.add_argument("--eval_freq", type=int, default=150)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--work", default="outputs/bench_finetune")
    args = parser.parse_args()
    base, work = Path(args.base).resolve(), Path(args.work).resolve()
    if not (base / "config.json").is_file():
        raise SystemExit(f"no base checkpoint at {base}: run `smolvla demo` first, or pass --base")
    data = work / f"demos_{args.task}"
    collect_s = 0.0
    if not data.exists():
        collect_s, _ = smolvla("collect", f"--env.task={args.task}", f"--env.cameras={CAMERAS}", "--env.image_size=64",
                               "--episodes_per_task=30", f"--output_dir={data}", "--num_workers=2")  # fmt: skip
    rows, curves = [evaluate_views(base, work / "base", args, {"run": "base (no fine-tuning)", "trainable": 0})], {}
    for name in args.runs.split(","):
        out = work / name.replace("+", "_")
        done = out / "checkpoints" / f"{args.steps:06d}"
        train_s = peak = None
        if not done.is_dir():
            train_s, peak = smolvla(
                "train", f"--dataset.root={data}", f"--policy.path={base}", f"--output_dir={out}",
                f"--steps={args.steps}", f"--batch_size={args.batch_size}", "--num_workers=1", "--progress=false",
                "--dataset.cache_frames=true", f"--policy.scheduler_warmup_steps={args.steps // 20}",
                f"--policy.scheduler_decay_steps={args.steps}", f"--save_freq={args.steps}",
                f"--val_freq={args.eval_freq}", f"--eval_freq={args.eval_freq}", f"--env.task={args.task}",
                "--eval.n_episodes=10", "--eval.num_workers=2", f"--log_freq={args.eval_freq // 3}", *RUNS[name],
            )  # fmt: skip
            (out / "bench_train.json").write_text(json.dumps({"seconds": train_s, "peak_mib": peak}) + "\n")
        timing = json.loads((out / "bench_train.json").read_text())
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        sps = [m["train/samples_per_s"] for m in metrics if "train/samples_per_s" in m]
        curves[name] = {
            "success": [(m["step"], m["eval/success"]) for m in metrics if "eval/success" in m],
            "val_loss": [(m["step"], m["val/loss"]) for m in metrics if "val/loss" in m],
        }
        row = {"run": name, "trainable": trainable(done / "pretrained_model"),
               "s_per_step": round(args.batch_size / (sum(sps) / len(sps)), 3), "peak_mib": round(timing["peak_mib"]),
               "train_min": round(timing["seconds"] / 60, 1)}  # fmt: skip
        best = json.loads((out / "checkpoints" / "best.json").read_text())
        row["best_step"] = f"{best['step']} ({best['success']:.0%})"
        rows.append(evaluate_views(done / "pretrained_model", out, args, row))
    plot(curves, RESULTS / "finetune_cpu.png")
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "task": args.task,
               "base": str(base), "steps": args.steps, "batch_size": args.batch_size, "collect_s": collect_s,
               "curves": curves}  # fmt: skip
    columns = {"run": "run", "trainable params": "trainable", "s/step": "s_per_step", "peak MiB": "peak_mib",
               "train min": "train_min", "success (trained view)": "trained", "moved camera": "moved camera",
               "light 50 %": "light 50%", "best step (success)": "best_step"}  # fmt: skip
    report("finetune_cpu", machine, rows, columns)


def evaluate_views(checkpoint: Path, out: Path, args, row: dict) -> dict:
    """Success of `checkpoint` on `--task` in each view (VIEWS), filled into `row`."""
    for view, flags in VIEWS.items():
        result = out / f"eval_{view.split()[0]}"
        if not (result / "eval_info.json").is_file():
            smolvla("eval", f"--policy.path={checkpoint}", f"--env.task={args.task}", "--eval.num_workers=2",
                    f"--eval.n_episodes={args.episodes}", "--eval.videos_per_task=0", f"--output_dir={result}",
                    *flags)  # fmt: skip
        row[view] = f"{json.loads((result / 'eval_info.json').read_text())['overall']['success_rate']:.0%}"
    return {"s_per_step": "–", "peak_mib": "–", "train_min": "–", "best_step": "–", **row}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    twin = ax.twinx()
    for name, curve in curves.items():
        if curve["success"]:
            line = ax.plot(*zip(*curve["success"], strict=True), marker="o", label=f"{name}: success")[0]
            if curve["val_loss"]:
                twin.plot(*zip(*curve["val_loss"], strict=True), ls="--", color=line.get_color(), label=f"{name}: val")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("success on the new task (solid)")
    twin.set_ylabel("validation loss (dashed)")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
