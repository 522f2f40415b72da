"""What a run reports: metrics.jsonl (one JSON object per logged step), TensorBoard scalars and a progress bar.

Only the main process writes. A resumed run first drops what a killed run logged after its last checkpoint, so
every step appears once in metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class Interval:
    """Running sums between two log lines, on the device so a step never waits for the host."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.steps = 0
        self.started = time.perf_counter()


class MetricsLog:
    def __init__(self, output_dir: Path, start_step: int, total_steps: int, resumed: bool, progress: bool):
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        metrics = output_dir / METRICS_FILE
        if metrics.is_file():  # drop what a killed run logged after its last checkpoint
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            tmp = metrics.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, metrics)
        purge = start_step + 1 if resumed else None
        self.writer = SummaryWriter(str(output_dir / TENSORBOARD_DIR), purge_step=purge)
        self.bar = None
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def record(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step" and value is not None and math.isfinite(value):
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()
        with open(self.output_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['train/loss']:.4f}", lr=f"{row['train/lr']:.1e}",
                grad=f"{row['train/grad_norm']:.2f}", sps=f"{row['train/samples_per_s']:.0f}",
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


def group_columns(dataset_names: list[str], tasks: list[str], sums: torch.Tensor) -> dict[str, float]:
    """Mean loss per dataset (when there are several) and per task, from `GroupLosses` sums reduced over processes."""
    n_ds = len(dataset_names)
    names = [f"loss_dataset/{i}_{name}" for i, name in enumerate(dataset_names)] if n_ds > 1 else []
    names += [f"loss_task/{task[:60]}" for task in tasks]
    columns = range(n_ds, sums.shape[1]) if n_ds == 1 else range(sums.shape[1])
    return {
        name: float(sums[0, column] / sums[1, column])
        for name, column in zip(names, columns, strict=True)
        if sums[1, column] > 0
    }
