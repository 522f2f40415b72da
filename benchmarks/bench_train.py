"""Training throughput of the real trainer (data loading, processors, loss, AdamW step) in samples per second.

    .venv/bin/python benchmarks/bench_train.py [--presets tiny,smolvla_base] [--threads 2]

A synthetic LeRobot dataset (one 96x128 video camera, 6-D state and action, frames cached in RAM) is trained on with
`smolvla.train` as `smolvla train` would, from the preset with LeRobot's defaults (frozen backbone, trainable expert
and state projection): fp32, fp32 with the loss compiled (`--policy.compile_model=true`; tiny only on a CPU, where
compiling the full model would outlast its three timed steps) and bf16 autocast, one after another in one run.
Throughput is the median over the logged steps after the warm-up steps (three when compiled: the first compiles).
Prints a markdown table and writes benchmarks/results/train_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report
from smolvla.bench import machine_info

# preset → (batch size, timed steps) per device kind: the full model is ~4 s per sample-step on 2 CPU cores.
# bf16 on a CPU without BF16 units is ~10x slower than fp32 (docs/benchmarks.md), hence the few full-size steps.
PLAN = {"cpu": {"tiny": (32, 20), "smolvla_base": (1, 3)}, "cuda": {"tiny": (64, 50), "smolvla_base": (32, 20)}}
# (bf16 autocast, torch.compile) per row; compiled rows only for the presets COMPILED names per device
VARIANTS = ((False, False), (False, True), (True, False))
COMPILED = {"cpu": {"tiny"}, "cuda": {"tiny", "smolvla_base"}}


def write_dataset(root: Path, episodes: int = 4, length: int = 60) -> Path:
    from smolvla.data import DatasetWriter

    features = {
        "observation.state": {"dtype": "float32", "shape": [6]},
        "action": {"dtype": "float32", "shape": [6]},
        "observation.images.cam": {"dtype": "video", "shape": [96, 128, 3]},
    }
    rng = np.random.default_rng(0)
    with DatasetWriter(root, fps=30, features=features) as writer:
        for e in range(episodes):
            writer.add_episode(
                {
                    "observation.state": rng.normal(size=(length, 6)).astype(np.float32),
                    "action": rng.normal(size=(length, 6)).astype(np.float32),
                    "observation.images.cam": rng.integers(0, 255, (length, 96, 128, 3), dtype=np.uint8),
                },
                task=f"task number {e % 2}",
            )
    return root


def measure(
    dataset: Path, out: Path, preset: str, amp: bool, compiled: bool, batch: int, steps: int, device: str
) -> dict:
    import json

    from smolvla.train.config import TrainConfig
    from smolvla.train.trainer import train

    warmup = 3 if compiled else 1
    config = TrainConfig(output_dir=str(out), batch_size=batch, steps=steps + warmup, log_freq=1, val_freq=0,
                         save_checkpoint=False, num_workers=1, progress=False)  # fmt: skip
    config.dataset.root = (str(dataset),)
    config.dataset.cache_frames = True
    config.dataset.val_fraction = 0.0
    config.policy.preset, config.policy.use_amp, config.policy.device = preset, amp, device
    config.policy.compile_model = compiled
    result = train(config)
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][warmup:]
    rate = statistics.median(rates)
    return {
        "preset": preset,
        "dtype": "bf16 autocast" if amp else "fp32",
        "compiled": compiled,
        "batch": batch,
        "samples_per_s": round(rate, 2),
        "step_s": round(batch / rate, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,smolvla_base")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "ds")
        for preset in args.presets.split(","):
            batch, steps = PLAN[device][preset]
            for amp, compiled in VARIANTS:
                if compiled and preset not in COMPILED[device]:
                    continue
                start = time.perf_counter()
                out = Path(tmp) / f"{preset}-{amp}-{compiled}"
                row = measure(dataset, out, preset, amp, compiled, batch, steps, device)
                print(f"{row} ({time.perf_counter() - start:.0f} s)", flush=True)
                rows.append(row)
    machine = {**machine_info(device), "date": time.strftime("%Y-%m-%d")}  # the CPU's BF16 units decide the bf16 rows
    columns = {"preset": "preset", "dtype": "dtype", "compiled": "compiled", "batch": "batch",
               "samples/s": "samples_per_s", "s/step": "step_s"}  # fmt: skip
    report(f"train_{device}", machine, rows, columns)


if __name__ == "__main__":
    main()
