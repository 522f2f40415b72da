"""What each inference design choice buys, predicted from a cost model and then measured, on this machine.

    .venv/bin/python benchmarks/bench_ablation.py [--presets tiny,smolvla_base]     # ~10 min on 2 cores

Each row switches one choice off and on and compares a prediction made *before* timing the change (from FLOP
counts, measured component times, matmul microbenchmarks or op counts) with the measured speed-up:

  prefix KV cache        predicted n(E + S) / (E + nS) from the measured encode time E and step time S;
                         measured: `use_cache=False` (re-encode the prefix every step, LeRobot's uncached path)
  cross-attn K/V once    predicted (S + P) / S, P = the CA layers' K/V projections of the prefix that a per-step
                         recompute would add (timed alone); measured by adding exactly that work to each step
  cameras in one batch   predicted from the GEMM rate of the vision MLP at M = 1024 tokens vs M = 3 x 1024;
                         measured: the vision tower per camera vs all three cameras concatenated
  OpenMP spin vs PASSIVE predicted: ops per chunk x (sleep/wake cost of one small parallel op, microbenchmarked);
                         measured: the same chunk in two child processes, OMP_WAIT_POLICY=PASSIVE vs unset
  compile (per function) predicted: the chunk shrinks to its matmul/attention kernels' time (profiled) plus one
  / (whole chunk)        call's overhead per compiled function call; measured: `compile_inference()`
Writes benchmarks/results/ablation_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from smolvla.bench import build_policy, make_batch, variant
from smolvla.timing import timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.report import report

KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention")  # fmt: skip


def row(change: str, preset: str, before_s: float, after_s: float, predicted: float, model: str) -> dict:
    measured = before_s / after_s
    out = {"change": change, "preset": preset, "before_ms": round(before_s * 1e3, 1),
           "after_ms": round(after_s * 1e3, 1), "predicted_speedup": round(predicted, 2),
           "measured_speedup": round(measured, 2), "prediction": model}  # fmt: skip
    print(out, flush=True)
    return out


def prefix_cache(policy, batch, reps: int, preset: str) -> dict:
    m = policy.model
    prefix = policy.prepare_observation(batch)
    noise = torch.randn(1, m.config.chunk_size, m.config.max_action_dim)
    with torch.no_grad():
        _, encode_s = timed(lambda: m.encode(prefix), reps, "cpu")
        cache = m.encode(prefix)
        _, step_s = timed(lambda: m.velocity(cache, noise, torch.full((1,), 0.5)), reps, "cpu")
    n = 10
    predicted = n * (encode_s + step_s) / (encode_s + n * step_s)
    m.config = policy.config.replace(use_cache=False)  # only the sampling path reads it
    _, before = timed(lambda: policy.predict_chunk(batch, noise=noise, num_steps=n), reps, "cpu")
    m.config = policy.config
    _, after = timed(lambda: policy.predict_chunk(batch, noise=noise, num_steps=n), reps, "cpu")
    return row("prefix KV cache (10 steps)", preset, before, after, predicted,
               f"E = {encode_s * 1e3:.1f} ms, S = {step_s * 1e3:.1f} ms")  # fmt: skip


def cross_kv_once(policy, batch, reps: int, preset: str) -> dict:
    m = policy.model
    vlm = m.vlm_with_expert
    prefix = policy.prepare_observation(batch)
    noise = torch.randn(1, m.config.chunk_size, m.config.max_action_dim)
    with torch.no_grad():
        cache = m.encode(prefix)
        cross = [(i, vlm.lm_expert.layers[p.expert].self_attn) for i, p in enumerate(vlm.plan) if p.expert is not None
                 and p.cross]  # fmt: skip
        # the backbone K/V (B, P, kv_width) each CA layer would re-project, in the layout the projection reads
        flat = {i: cache.keys[i].transpose(1, 2).flatten(2) for i, _ in cross}

        def reproject():
            for i, attn in cross:
                attn.k_proj(flat[i])
                attn.v_proj(flat[i])

        def step():
            return m.velocity(cache, noise, torch.full((1,), 0.5))

        _, project_s = timed(reproject, reps, "cpu")
        _, step_s = timed(step, reps, "cpu")
        _, before = timed(lambda: (reproject(), step()), reps, "cpu")
    return row("cross-attn K/V once per chunk (per step)", preset, before, step_s, (step_s + project_s) / step_s,
               f"{len(cross)} CA layers, projections {project_s * 1e3:.2f} ms")  # fmt: skip


def gemm_rate(m: int, k: int, n: int) -> float:
    x, w = torch.randn(m, k), torch.randn(n, k)
    _, seconds = timed(lambda: torch.nn.functional.linear(x, w), 5, "cpu")
    return 2 * m * k * n / seconds


def camera_batching(reps: int, preset: str) -> dict:
    policy = build_policy(preset, 3, (96, 128), "cpu").eval()
    batch = make_batch(policy, 1, 48, "cpu")
    vlm = policy.model.vlm_with_expert
    with torch.no_grad():
        images = policy.prepare_observation(batch).images
        vision = vlm.vlm.config.vision_config
        tokens = (images[0].shape[-1] // vision.patch_size) ** 2
        predicted = gemm_rate(3 * tokens, vision.hidden_size, vision.intermediate_size) / gemm_rate(
            tokens, vision.hidden_size, vision.intermediate_size
        )
        _, before = timed(lambda: [vlm.embed_images(img) for img in images], reps, "cpu")
        _, after = timed(lambda: vlm.embed_images(torch.cat(images)), reps, "cpu")
    return row("3 cameras in one vision batch", preset, before, after, predicted,
               f"vision MLP GEMM rate at M={3 * tokens} / M={tokens}")  # fmt: skip


CHILD = """
import sys, time, statistics, torch
from smolvla.bench import build_policy, make_batch, variant
from smolvla.timing import timed
torch.set_num_threads({threads})
x = torch.randn(1 << 16)
_, op_s = timed(lambda: x.add_(1.0), 2000, "cpu")  # a small op big enough to run on every thread
policy = build_policy("{preset}", 1, (96, 128), "cpu").eval()
batch = make_batch(policy, 1, 48, "cpu")
_, chunk_s = timed(lambda: policy.predict_chunk(batch, num_steps=10), {reps}, "cpu")
print(op_s, chunk_s)
"""


def count_ops(policy, batch) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        policy.predict_chunk(batch, num_steps=10)
    return Count.n


def omp_wait_policy(policy, batch, reps: int, preset: str) -> dict:
    results = {}
    for wait in ("PASSIVE", None):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if wait:
            env["OMP_WAIT_POLICY"] = wait
        code = CHILD.format(threads=torch.get_num_threads(), preset=preset, reps=reps)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        results[wait] = [float(v) for v in out.stdout.split()[-2:]]
    (op_passive, before), (op_spin, after) = results["PASSIVE"], results[None]
    ops = count_ops(policy, batch)
    predicted = (after + ops * (op_passive - op_spin)) / after
    return row("OpenMP spin-wait instead of PASSIVE", preset, before, after, predicted,
               f"{ops} ops/chunk x {1e6 * (op_passive - op_spin):.1f} us wake-up each")  # fmt: skip


def compiled(policy, batch, reps: int, preset: str, whole_chunk: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    _, before = timed(lambda: policy.predict_chunk(batch, noise=noise, num_steps=10), reps, "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        policy.predict_chunk(batch, noise=noise, num_steps=10)
    events = prof.key_averages()
    kernel_s = sum(e.self_cpu_time_total for e in events if e.key in KERNELS) / 1e6
    total_s = sum(e.self_cpu_time_total for e in events) / 1e6
    kernel_s *= before / total_s  # the profiler's own overhead inflates every op alike
    calls = 1 if whole_chunk else 11  # compiled-function calls per chunk: one, or encode + 10 velocities
    predicted = before / (kernel_s + calls * 1e-4)  # ~0.1 ms of guards and wrapper per compiled call
    fast = variant(policy, "fp32", "compiled_chunk" if whole_chunk else "compiled")
    _, after = timed(lambda: fast.predict_chunk(batch, noise=noise, num_steps=10), reps, "cpu")
    name = "torch.compile, whole chunk" if whole_chunk else "torch.compile, encoder + velocity"
    return row(name, preset, before, after, predicted, f"matmul/attention kernels {kernel_s * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,smolvla_base")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    start = time.time()
    for preset in args.presets.split(","):
        reps = 20 if preset == "tiny" else 3
        policy = build_policy(preset, 1, (96, 128), "cpu").eval()
        batch = make_batch(policy, 1, 48, "cpu")
        rows.append(prefix_cache(policy, batch, reps, preset))
        rows.append(cross_kv_once(policy, batch, reps, preset))
        if preset == "tiny":  # overhead-bound: where wake-ups and compilation matter
            rows.append(omp_wait_policy(policy, batch, reps, preset))
            rows.append(compiled(policy, batch, reps, preset, whole_chunk=False))
            rows.append(compiled(policy, batch, reps, preset, whole_chunk=True))
        else:  # FLOP-bound: where the vision batch matters
            rows.append(camera_batching(reps, preset))
        del policy
    machine = {"device": "cpu", "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
               "torch": torch.__version__, "seconds": round(time.time() - start)}  # fmt: skip
    columns = {"change": "change", "preset": "preset", "before (ms)": "before_ms", "after (ms)": "after_ms",
               "predicted ×": "predicted_speedup", "measured ×": "measured_speedup",
               "prediction from": "prediction"}  # fmt: skip
    report("ablation_cpu", machine, rows, columns)


if __name__ == "__main__":
    main()
