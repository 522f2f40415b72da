"""`smolvla continual`: train the stages in order, and after each one measure every task seen so far.

After stage i: the validation loss on each seen task's held-out episodes (fixed frames and noise, so comparable
across stages) with a status relative to the task's own loss right after it was learnt, and — for tasks with a
`sim_task` — closed-loop success on Meta-World. The run directory `<output_dir>/<method>/` holds:

    continual_config.json   the settings (a rerun must match; appending stages to a finished run is allowed)
    stats.json, tokenizer/  normalization and tokenizer shared by all stages
    stages/<NN>_<task>/     the stage's training run (checkpoints, metrics.jsonl, TensorBoard), eval/, and
                            stage_result.json once measured (a rerun skips finished stages, resumes a killed one)
    tensorboard/            per-task validation loss and success against stage number
    results.json            success matrix R[i][j], loss matrix, FWT/NBT/AUC, statuses, wall times
    success_matrix.png      heat-map of R (or of the loss ratios when nothing is simulated)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from smolvla.atomic import atomic_write_text
from smolvla.continual.config import ContinualConfig
from smolvla.continual.metrics import LEARNT, forgetting_status, lifelong_metrics
from smolvla.continual.plan import Stage, run_dir, stages, task_metas, validation_split, write_shared
from smolvla.continual.report import plot_matrix
from smolvla.data import LeRobotDataset, chunk_delta_timestamps
from smolvla.errors import ConfigError
from smolvla.policy import SmolVLAPolicy
from smolvla.processors import load_processors
from smolvla.sim.tasks import canonical
from smolvla.train.checkpoint import has_checkpoints
from smolvla.train.loss import validation_loss
from smolvla.train.metrics import METRICS_FILE
from smolvla.train.trainer import train

CONFIG_FILE = "continual_config.json"
STAGE_RESULT = "stage_result.json"
RESULTS_FILE = "results.json"
HEATMAP_FILE = "success_matrix.png"
# Settings a rerun may change: they do not change what is trained or measured.
VOLATILE = {"": ("output_dir", "config_path"), "train": ("num_workers", "progress"), "eval": ("num_workers",)}


def run_continual(config: ContinualConfig) -> dict[str, Any]:
    """Run (or continue) every stage of `config.method`; returns what `results.json` holds."""
    config.validate()
    out = run_dir(config)
    metas = task_metas(config)
    plan = stages(config)
    for stage in plan:
        stage.train.validate()
    _check_config(out, config)
    write_shared(config, metas)
    device = config.train.policy.device or _default_device()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for k, stage in enumerate(plan):
        marker = stage.output_dir / STAGE_RESULT
        if marker.is_file():
            rows.append(json.loads(marker.read_text()))
            print(f"stage {k + 1}/{len(plan)} ({stage.name}) already done")
            continue
        row = _run_stage(config, stage, k, len(plan), metas, rows, device)
        _log_tensorboard(out, row, k + 1)
        atomic_write_text(marker, json.dumps(row, indent=2) + "\n")
        rows.append(row)
        print_stage(row, len(plan))
    results = summarize(config, rows)
    results["wall_s_this_run"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    try:
        results["heatmap"] = str(plot_matrix(results, out / HEATMAP_FILE))
    except ImportError:  # matplotlib comes with the sim extra
        results["heatmap"] = None
    print_summary(results)
    return results


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_config(out: Path, config: ContinualConfig) -> None:
    """A rerun continues the same experiment: same settings, and the finished stages a prefix of the new ones."""
    current = config.to_dict()
    path = out / CONFIG_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        before, after = _comparable(saved), _comparable(current)
        stages_before, stages_after = before.pop("stages"), after.pop("stages")
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed or stages_after[: len(stages_before)] != stages_before:
            what = ", ".join(changed) if changed else "stages (only appending new stages is allowed)"
            raise ConfigError(
                f"{out} holds a continual run with other settings ({what}); use another --output_dir, or the same "
                "settings to continue it"
            )
    atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def _comparable(mapping: dict[str, Any]) -> dict[str, Any]:
    mapping = json.loads(json.dumps(mapping))
    for group, keys in VOLATILE.items():
        target = mapping.get(group, {}) if group else mapping
        for key in keys:
            target.pop(key, None)
    return mapping


def _run_stage(config, stage: Stage, k: int, n: int, metas, rows, device: str) -> dict[str, Any]:
    mix = ", ".join(f"{t} {w:.2f}" for t, w in stage.mixture.items())
    lr = stage.train.policy.optimizer_lr
    print(f"\n=== stage {k + 1}/{n}: {stage.name} ({stage.train.steps} steps, lr {lr:.2g}, mixture: {mix}) ===")
    t0 = time.perf_counter()
    if not stage.final_checkpoint.is_dir():
        stage.train.resume = has_checkpoints(stage.output_dir)
        train(stage.train)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = validation_losses(config, stage, metas, device)
    success = closed_loop_success(config, stage, device)
    row = {
        "stage": k + 1,
        "name": stage.name,
        "task": stage.task,
        "mixture": stage.mixture,
        "steps": stage.train.steps,
        "lr": stage.train.policy.optimizer_lr,
        "episode_fraction": list(stage.train.dataset.episode_fraction),
        "freeze_vision_encoder": stage.train.policy.freeze_vision_encoder,
        "train_expert_only": stage.train.policy.train_expert_only,
        "train_loss": _last_train_loss(stage.output_dir),
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
        "val_loss": losses,
        "success": success,
    }
    row["status"] = {t: _status(config, t, row, rows) for t in stage.seen}
    return row


def _status(config: ContinualConfig, task_id: str, row: dict[str, Any], rows: list[dict[str, Any]]) -> str | None:
    if row["task"] is None:
        return None  # multitask: nothing was learnt before
    if row["task"] == task_id:
        return LEARNT
    learnt = next(r for r in reversed(rows) if r["task"] == task_id)  # its loss right after it was (last) learnt
    f = config.forgetting
    return forgetting_status(row["val_loss"].get(task_id), learnt["val_loss"].get(task_id), f.slight, f.significant)


def _last_train_loss(output_dir: Path) -> float | None:
    path = output_dir / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    return losses[-1] if losses else None


def validation_losses(config: ContinualConfig, stage: Stage, metas, device: str) -> dict[str, float | None]:
    """Loss of the stage's final policy on each seen task's held-out episodes (None: the task has none)."""
    policy = SmolVLAPolicy.from_pretrained(stage.final_checkpoint).to(device)
    pre, _ = load_processors(stage.final_checkpoint, device=device)
    out: dict[str, float | None] = {}
    for task_id in stage.seen:
        meta = metas[task_id]
        episodes = validation_split(config, meta)
        if not episodes:
            out[task_id] = None
            continue
        data = LeRobotDataset(meta.root, episodes, chunk_delta_timestamps(policy.config.chunk_size, meta.fps))
        out[task_id] = validation_loss(
            policy, pre, data, config.train.batch_size, config.eval.val_batches, config.train.seed,
            config.train.policy.use_amp,
        )  # fmt: skip
    return out


def closed_loop_success(config: ContinualConfig, stage: Stage, device: str) -> dict[str, float]:
    """Meta-World success of the stage's final policy on each seen task that has a `sim_task`."""
    sim = {t: config.task(t).sim_task for t in stage.seen if config.task(t).sim_task}
    if not sim or config.eval.episodes == 0:
        return {}
    # The simulator is the optional `sim` extra: only runs that measure success need it installed.
    from smolvla.eval.evaluate import EvalConfig, EvalLoop, PolicyRef, evaluate
    from smolvla.sim.metaworld_env import MetaWorldConfig

    summary = evaluate(
        EvalConfig(
            policy=PolicyRef(path=str(stage.final_checkpoint), device=device),
            env=MetaWorldConfig(task=",".join(dict.fromkeys(sim.values())), max_steps=config.eval.max_steps),
            eval=EvalLoop(n_episodes=config.eval.episodes, num_workers=config.eval.num_workers, videos_per_task=0),
            seed=config.eval.seed,
            output_dir=str(stage.output_dir / "eval"),
        ),
        progress=False,
    )
    return {t: summary["per_task"][canonical(name)]["success_rate"] for t, name in sim.items()}


def _log_tensorboard(out: Path, row: dict[str, Any], stage: int) -> None:
    with SummaryWriter(str(out / "tensorboard"), purge_step=stage) as writer:
        for task_id, loss in row["val_loss"].items():
            if loss is not None:
                writer.add_scalar(f"val_loss/{task_id}", loss, stage)
        for task_id, rate in row["success"].items():
            writer.add_scalar(f"success/{task_id}", rate, stage)
        if row["success"]:
            writer.add_scalar("success/mean_seen", sum(row["success"].values()) / len(row["success"]), stage)


def summarize(config: ContinualConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Matrices over (stage, task in learning order), the lifelong metrics and the final per-task numbers."""
    order = list(dict.fromkeys(s.task for s in config.stages))

    def matrix(key: str) -> list[list[float | None]]:
        return [[row[key].get(t) for t in order] for row in rows]

    success, loss = matrix("success"), matrix("val_loss")
    metrics = None
    if config.method != "multitask" and all(row["success"].get(row["task"]) is not None for row in rows):
        # c[i][k]: success on stage k's task after stage i (a task learnt twice counts once per stage)
        c = [[row["success"].get(rows[k]["task"], float("nan")) for k in range(len(rows))] for row in rows]
        metrics = lifelong_metrics(c)
    last = rows[-1]
    final_success = [last["success"][t] for t in order if t in last["success"]]
    return {
        "method": config.method,
        "tasks": order,
        "stages": rows,
        "success_matrix": success,
        "loss_matrix": loss,
        "metrics": metrics,
        "final_mean_success": sum(final_success) / len(final_success) if final_success else None,
        "train_s": round(sum(r["train_s"] for r in rows), 1),
        "eval_s": round(sum(r["eval_s"] for r in rows), 1),
    }


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def print_stage(row: dict[str, Any], n: int) -> None:
    took = f"trained {row['train_s']:.0f} s, measured {row['eval_s']:.0f} s"
    print(f"\nafter stage {row['stage']}/{n} ({row['name']}): {took}")
    print(f"  {'task':<16} {'val loss':>9} {'success':>8}  status")
    for task_id, loss in row["val_loss"].items():
        success = _fmt(row["success"].get(task_id), ".2f")
        print(f"  {task_id:<16} {_fmt(loss):>9} {success:>8}  {row['status'].get(task_id) or ''}")


def print_summary(results: dict[str, Any]) -> None:
    simulated = any(v is not None for row in results["success_matrix"] for v in row)
    key, label, spec = ("success_matrix", "success", ".2f") if simulated else ("loss_matrix", "validation loss", ".4f")
    print(f"\n{results['method']}: {label} after each stage (rows) on each task ({', '.join(results['tasks'])})")
    for row, values in zip(results["stages"], results[key], strict=True):
        print(f"  {row['name']:<20} " + " ".join(f"{_fmt(v, spec):>7}" for v in values))
    if results["metrics"]:
        m = results["metrics"]
        print(f"  FWT {_fmt(m['FWT'], '.3f')}  NBT {_fmt(m['NBT'], '.3f')}  AUC {_fmt(m['AUC'], '.3f')}")
    if results["final_mean_success"] is not None:
        print(f"  final mean success {results['final_mean_success']:.3f}")
    print(f"  train {results['train_s']:.0f} s, measure {results['eval_s']:.0f} s; heat-map: {results['heatmap']}")
