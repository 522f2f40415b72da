"""`smolvla bench`: how fast SmolVLA runs on this machine, and how close that is to the machine's own matmul rate.

For every combination of preset × cameras × batch size × dtype × mode it times action chunks at each requested
number of denoising steps and one training step (forward + backward), records peak memory, counts FLOPs with
`torch.utils.flop_counter` and divides by the measured rate of one large matmul in the same dtype on the same
threads ("% of peak": 100 would mean every FLOP ran at that rate). Weights are random (no download), with the
preset's architecture; inputs follow LeRobot's reference measurement: 96×128 camera frames (resized with padding
to the preset's resolution), 48 language tokens, one 6-D state.

Modes: `eager`; `compiled` (`compile_inference()`: prefix encoder and velocity compiled separately);
`compiled_chunk` (`compile_inference(whole_chunk=True)`: the whole chunk as one graph, one compile per step count);
`onnx` / `onnx_int8` (`smolvla export` of the same weights, verified, run on ONNX Runtime; fp32 rows only, the
export's seconds in the compile column).
bf16 inference casts the weights; bf16 training uses autocast over fp32 weights (what mixed-precision training
does). Writes a JSON file (atomically) and prints a markdown table.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.initialization import no_init_weights

from smolvla.atomic import atomic_write_text
from smolvla.errors import ConfigError
from smolvla.flags import to_mapping
from smolvla.keys import ACTION_KEY, IMAGE_PREFIX, LANG_MASK, LANG_TOKENS, STATE_KEY
from smolvla.model.presets import PRESETS as ARCHITECTURES
from smolvla.policy import SmolVLAPolicy
from smolvla.runtime.export import ensure_export
from smolvla.runtime.onnx_policy import OnnxPolicy
from smolvla.timing import timed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODES = ("eager", "compiled", "compiled_chunk", "onnx", "onnx_int8")
PRESETS = tuple(ARCHITECTURES)


@dataclass
class BenchConfig:
    presets: tuple[str, ...] = ("tiny",)  # tiny, smolvla_base (the full-size 450M-parameter SmolVLA)
    cameras: tuple[int, ...] = (1,)
    batch_sizes: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("fp32",)  # fp32, bf16
    modes: tuple[str, ...] = ("eager",)  # eager, compiled, compiled_chunk, onnx, onnx_int8
    steps: tuple[int, ...] = (1, 2, 5, 10)  # denoising steps per timed chunk
    train: bool = True  # also time a training step (eager rows only)
    reps: int = 3  # timed repetitions per measurement (median reported), after one warm-up call
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default (one per core)
    device: str = "auto"  # auto (cuda when present), cpu, cuda
    image_size: tuple[int, ...] = (96, 128)  # camera frame height, width before the preset's resize
    language_tokens: int = 48
    output: str = "outputs/bench/model.json"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, values, known in (("presets", self.presets, PRESETS), ("dtypes", self.dtypes, DTYPES),
                                    ("modes", self.modes, MODES)):  # fmt: skip
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ConfigError(f"--{name}: unknown {unknown or 'empty list'}; choose from {', '.join(known)}")
        for name in ("cameras", "batch_sizes", "steps"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ConfigError(f"--{name} must be positive integers, got {values}")
        if self.reps < 1 or self.threads < 0 or self.language_tokens < 1:
            raise ConfigError("--reps and --language_tokens must be >= 1 and --threads >= 0")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"--image_size must be height,width, got {self.image_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device=cuda but torch sees no CUDA device")

    @property
    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


# --- measuring ---
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn, device: str) -> float | None:
    """Extra memory one call of `fn` needs at its peak, in MiB, over what was allocated before it.

    CUDA: the caching allocator's exact peak. CPU: the process's resident set (freed heap trimmed first) sampled
    every millisecond by a thread (Linux), so a spike shorter than that can be missed; None where /proc is absent.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not Path("/proc/self/statm").exists():
        return None
    _trim_heap()
    before = peak = _rss_bytes()
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.wait(0.001):
            peak = max(peak, _rss_bytes())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        fn()
    finally:
        done.set()
        poller.join()
    return (max(peak, _rss_bytes()) - before) / 2**20


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so memory the call reuses shows up in the resident set again."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the measure is just less tight
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def matmul_peak_gflops(dtype: torch.dtype, device: str) -> float:
    """GFLOP/s of one large square `F.linear` (x @ Wᵀ, the model's own matmul form): the practical ceiling for this
    dtype, device and thread count. n = 4096 on CUDA, 2048 on a CPU (1024 in bf16, which a CPU without bf16
    instructions converts to fp32 and back, several times slower; and `a @ b` in bf16 there is ~20x slower still)."""
    n = 4096 if device == "cuda" else (2048 if dtype == torch.float32 else 1024)
    x, w = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    _, seconds = timed(lambda: torch.nn.functional.linear(x, w), 5 if device == "cuda" else 3, device)
    return 2 * n**3 / seconds / 1e9


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# --- what is measured ---
def build_policy(preset: str, cameras: int, image_size: tuple[int, ...], device: str):
    """A policy of `preset`'s architecture with `cameras` cameras and random weights (small normals: a
    random-initialised 450M-parameter model's default init is slow and irrelevant to speed)."""
    features = {STATE_KEY: {"type": "STATE", "shape": [6]}}
    for i in range(cameras):
        features[f"{IMAGE_PREFIX}camera{i}"] = {"type": "VISUAL", "shape": [3, *image_size]}
    with no_init_weights():
        policy = SmolVLAPolicy.from_preset(preset, input_features=features)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.02 if p.ndim > 1 else 1.0 + 0.1 * noise)
    return policy.to(device)


def make_batch(policy, batch_size: int, language_tokens: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cfg = policy.config
    batch = {key: torch.rand(batch_size, *feat.shape, generator=gen) for key, feat in cfg.image_features.items()}
    batch[STATE_KEY] = torch.randn(batch_size, cfg.state_dim, generator=gen)
    batch[LANG_TOKENS] = torch.randint(3, 1000, (batch_size, language_tokens), generator=gen)
    batch[LANG_MASK] = torch.ones(batch_size, language_tokens, dtype=torch.bool)
    batch[ACTION_KEY] = torch.randn(batch_size, cfg.chunk_size, cfg.action_dim, generator=gen)
    return {k: v.to(device) for k, v in batch.items()}


def variant(policy, dtype: str, mode: str, scratch: Path):
    """A copy of `policy` in `dtype`, compiled per `mode` (the original stays fp32, eager, for training rows), or
    its ONNX export (written under `scratch`, once per policy and mode)."""
    if dtype == "fp32" and mode == "eager":
        return policy.eval()
    if mode.startswith("onnx"):
        checkpoint = scratch / f"policy-{id(policy)}"
        if not checkpoint.is_dir():
            policy.save_pretrained(checkpoint)
        return OnnxPolicy(ensure_export(checkpoint, "int8" if mode == "onnx_int8" else "none"))
    with no_init_weights():
        copy = SmolVLAPolicy(policy.config, policy.backbone)
    copy.load_state_dict(policy.state_dict())
    copy = copy.to(device=policy.device, dtype=DTYPES[dtype]).eval()
    if mode != "eager":
        copy.compile_inference(whole_chunk=mode == "compiled_chunk")
    return copy


@dataclass
class Workload:
    """One policy and batch, and the FLOPs of their chunk (at the most steps asked) and training step."""

    policy: Any
    batch: dict[str, torch.Tensor]
    chunk_flops: float
    train_flops: float | None


def workload(policy, batch: dict[str, torch.Tensor], config: BenchConfig) -> Workload:
    """Count FLOPs once per batch (eager fp32: the count does not depend on dtype or compilation); a chunk's
    from two cheap counts, encode + 1 step and encode + 2 steps."""
    one = count_flops(lambda: policy.eval().predict_chunk(batch, num_steps=1))
    per_step = count_flops(lambda: policy.predict_chunk(batch, num_steps=2)) - one
    train = count_flops(lambda: policy.train().compute_loss(batch).backward()) if config.train else None
    policy.zero_grad(set_to_none=True)
    return Workload(policy.eval(), batch, one + (max(config.steps) - 1) * per_step, train)


def bench_variant(
    work: Workload, dtype: str, mode: str, config: BenchConfig, peak: float, scratch: Path
) -> dict[str, Any]:
    device = config.resolved_device
    policy, batch = work.policy, work.batch
    started = time.perf_counter()
    model = variant(policy, dtype, mode, scratch)
    row: dict[str, Any] = {"dtype": dtype, "mode": mode}
    compile_s = round(time.perf_counter() - started, 1) if mode.startswith("onnx") else None
    for steps in config.steps:
        first, seconds = timed(lambda n=steps: model.predict_chunk(batch, num_steps=n), config.reps, device)
        if compile_s is None and mode != "eager":
            compile_s = round(first - seconds, 1)
        row[f"chunk_{steps}_ms"] = round(seconds * 1e3, 2)
    most = max(config.steps)
    row["compile_s"] = compile_s
    row["chunk_mem_mb"] = _round(peak_memory_mb(lambda: model.predict_chunk(batch, num_steps=most), device))
    row["chunk_gflop"] = round(work.chunk_flops / 1e9, 3)
    row["chunk_pct_of_peak"] = round(100 * work.chunk_flops / (row[f"chunk_{most}_ms"] / 1e3) / 1e9 / peak, 1)
    row["train_step_ms"] = row["train_mem_mb"] = row["train_pct_of_peak"] = None
    if work.train_flops is not None and mode == "eager":
        policy.train()

        def train_step():
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = policy.compute_loss(batch)
            loss.backward()
            policy.zero_grad(set_to_none=True)

        _, seconds = timed(train_step, config.reps, device)
        row["train_step_ms"] = round(seconds * 1e3, 1)
        row["train_mem_mb"] = _round(peak_memory_mb(train_step, device))
        row["train_pct_of_peak"] = round(100 * work.train_flops / seconds / 1e9 / peak, 1)
        policy.eval()
    return row


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else platform.processor()
        info["cpu_matmul_isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the whole matrix; returns {"machine", "rows"} and writes it to `config.output`."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = config.resolved_device
    peaks = {dtype: matmul_peak_gflops(DTYPES[dtype], device) for dtype in config.dtypes}
    print(markdown_table([], config), flush=True)
    rows = []
    scratch = tempfile.TemporaryDirectory(prefix="smolvla-bench-")  # ONNX exports of the random-weight policies
    for preset in config.presets:
        for cameras in config.cameras:
            policy = build_policy(preset, cameras, config.image_size, device)
            for batch_size in config.batch_sizes:
                work = workload(policy, make_batch(policy, batch_size, config.language_tokens, device), config)
                for dtype in config.dtypes:
                    for mode in config.modes:
                        if mode.startswith("onnx") and dtype != "fp32":
                            continue  # an export is fp32 (or int8 weights): no bf16 row
                        row = {"preset": preset, "params_m": round(policy.num_parameters() / 1e6, 1),
                               "cameras": cameras, "batch": batch_size}  # fmt: skip
                        row |= bench_variant(work, dtype, mode, config, peaks[dtype], Path(scratch.name))
                        row["peak_gflops"] = round(peaks[dtype], 1)
                        print(format_row(row, config), flush=True)
                        rows.append(row)
            del policy, work
    scratch.cleanup()
    result = {"machine": machine_info(device), "config": to_mapping(config), "rows": rows}
    atomic_write_text(Path(config.output), json.dumps(result, indent=2) + "\n")
    return result


def columns(config: BenchConfig) -> dict[str, str]:
    """Markdown header → row key."""
    cols = {"preset": "preset", "cams": "cameras", "batch": "batch", "dtype": "dtype", "mode": "mode"}
    cols |= {f"chunk {n} step{'s' * (n > 1)} (ms)": f"chunk_{n}_ms" for n in config.steps}
    cols |= {"chunk % of peak": "chunk_pct_of_peak", "chunk mem (MiB)": "chunk_mem_mb", "GFLOP/chunk": "chunk_gflop"}
    if config.train:
        cols |= {"train step (ms)": "train_step_ms", "train % of peak": "train_pct_of_peak",
                 "train mem (MiB)": "train_mem_mb"}  # fmt: skip
    cols |= {"compile (s)": "compile_s", "peak GFLOP/s": "peak_gflops"}
    return cols


def format_row(row: dict[str, Any], config: BenchConfig) -> str:
    return "| " + " | ".join("–" if row.get(k) is None else str(row[k]) for k in columns(config).values()) + " |"


def markdown_table(rows: list[dict[str, Any]], config: BenchConfig) -> str:
    cols = columns(config)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + [format_row(row, config) for row in rows])
