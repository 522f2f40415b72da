"""Chunk latency and training-step time of SmolVLA on this machine (tiny and full-size presets, fp32 / bf16,
eager / compiled), against the machine's own matmul rate.

    .venv/bin/python benchmarks/bench_model.py [--presets tiny,smolvla_base] [--dtypes fp32,bf16] [--compile]
        [--reps 3] [--threads 2]

FLOPs per chunk are counted by `torch.utils.flop_counter` (matmuls and attention), the peak is a 2048² matmul in
the same dtype on the same threads; "% of peak" = counted FLOPs / time / peak.

Setup as LeRobot's reference measurement (shared/reference.md): batch 1, one 96x128 camera (resized with padding to
the preset's resolution), 48 language tokens, 10 Euler steps per chunk. bf16 inference casts the weights; bf16
training uses CPU autocast over fp32 weights. Prints a markdown table and writes benchmarks/results/model_<device>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from smolvla import SmolVLAPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report


def build(preset: str, device: str) -> SmolVLAPolicy:
    from transformers.initialization import no_init_weights

    cam = {"type": "VISUAL", "shape": [3, 96, 128]}
    features = {"observation.state": {"type": "STATE", "shape": [6]}, "observation.images.cam": cam}
    with no_init_weights():  # random-init of 450M parameters is slow; fill with small normals instead
        policy = SmolVLAPolicy.from_preset(preset, input_features=features)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.1) + (1.0 if p.ndim == 1 else 0))
    return policy.to(device)


def make_batch(policy: SmolVLAPolicy, batch_size: int, device: str) -> dict[str, torch.Tensor]:
    cfg = policy.config
    return {
        "observation.images.cam": torch.rand(batch_size, 3, 96, 128, device=device),
        "observation.state": torch.randn(batch_size, 6, device=device),
        "observation.language.tokens": torch.randint(3, 1000, (batch_size, 48), device=device),
        "observation.language.attention_mask": torch.ones(batch_size, 48, dtype=torch.bool, device=device),
        "action": torch.randn(batch_size, cfg.chunk_size, 6, device=device),
    }


PEAKS: dict[tuple[str, str], float] = {}


def timed(fn, reps: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048) -> float:
    """GFLOP/s of one large square matmul: the practical ceiling for this dtype, device and thread count."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    seconds = timed(lambda: a @ b, 3 if dtype == torch.float32 else 1, device)
    return 2 * n**3 / seconds / 1e9


def chunk_flops(policy: SmolVLAPolicy, batch: dict, num_steps: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        policy.predict_chunk(batch, num_steps=num_steps)
    return counter.get_total_flops()


def bench(preset: str, reps: int, device: str, batch_size: int, dtypes: list[str], compile: bool) -> list[dict]:
    rows = []
    policy = build(preset, device)
    batch = make_batch(policy, batch_size, device)
    n_params = policy.num_parameters()
    flops = chunk_flops(policy.eval(), batch, 10)
    variants = [(d, False) for d in dtypes] + ([("fp32", True)] if compile else [])
    for dtype, compiled in variants:
        policy.eval()
        model = policy if dtype == "fp32" else policy.to(torch.bfloat16)
        if compiled:
            model = build(preset, device).eval().compile_inference()
        chunk_s = timed(lambda m=model: m.predict_chunk(batch, num_steps=10), reps, device)
        one_step_s = timed(lambda m=model: m.predict_chunk(batch, num_steps=1), reps, device)
        policy.to(torch.float32).train()
        if (dtype, device) not in PEAKS:
            PEAKS[dtype, device] = matmul_peak(torch.float32 if dtype == "fp32" else torch.bfloat16, device)
        peak = PEAKS[dtype, device]

        def train_step(dt=dtype):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dt == "bf16"):
                loss = policy.compute_loss(batch)
            loss.backward()
            policy.zero_grad(set_to_none=True)

        train_s = timed(train_step, reps, device) if not compiled else None
        row = {
            "preset": preset,
            "params": n_params,
            "dtype": dtype,
            "mode": "compiled" if compiled else "eager",
            "batch": batch_size,
            "chunk_10_steps_ms": round(chunk_s * 1e3, 1),
            "chunk_1_step_ms": round(one_step_s * 1e3, 1),
            "train_step_ms": None if train_s is None else round(train_s * 1e3, 1),
            "chunk_gflop": round(flops / 1e9, 2),
            "peak_gflops": round(peak, 1),
            "pct_of_peak": round(100 * flops / chunk_s / 1e9 / peak, 1),
        }
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,smolvla_base")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile'd fp32 inference row")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for preset in args.presets.split(","):
        reps = args.reps if preset != "tiny" else max(args.reps, 20)
        rows += bench(preset, reps, args.device, args.batch_size, args.dtypes.split(","), args.compile)
    machine = {
        "device": args.device,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    columns = {
        "preset": "preset",
        "dtype": "dtype",
        "mode": "mode",
        "batch": "batch",
        "chunk, 10 steps (ms)": "chunk_10_steps_ms",
        "chunk, 1 step (ms)": "chunk_1_step_ms",
        "train step (ms)": "train_step_ms",
        "GFLOP / chunk": "chunk_gflop",
        "matmul peak GFLOP/s": "peak_gflops",
        "% of peak": "pct_of_peak",
    }
    report(f"model_{args.device}", machine, rows, columns)


if __name__ == "__main__":
    main()
